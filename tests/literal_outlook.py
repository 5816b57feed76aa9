"""A literal, loop-by-loop implementation of outlook attention (VOLO paper, Eq. 3-5).

Independent of mmvolo's code: loops over output-grid positions, heads and window offsets on
tiny inputs. Used as ground truth by the tests.
"""
import torch


def literal_outlook_attention(v: torch.Tensor, logits: torch.Tensor, num_heads: int,
                              kernel_size: int, padding: int, stride: int) -> torch.Tensor:
    """v (B, H, W, C), logits (B, h, w, heads*K^4) -> (B, H, W, C), by explicit loops."""
    batch, height, width, channels = v.shape
    _, grid_h, grid_w, _ = logits.shape
    head_dim = channels // num_heads
    kk = kernel_size * kernel_size
    out = torch.zeros_like(v)
    for b in range(batch):
        for i in range(grid_h):
            for j in range(grid_w):
                # window offsets k -> absolute pixel (row, col), or None when outside
                pixels = []
                for k in range(kk):
                    row = i * stride - padding + k // kernel_size
                    col = j * stride - padding + k % kernel_size
                    inside = 0 <= row < height and 0 <= col < width
                    pixels.append((row, col) if inside else None)
                weights = logits[b, i, j].reshape(num_heads, kk, kk).softmax(dim=-1)
                for head in range(num_heads):
                    channel = slice(head * head_dim, (head + 1) * head_dim)
                    for k_out in range(kk):
                        if pixels[k_out] is None:
                            continue
                        mixed = torch.zeros(head_dim, dtype=v.dtype)
                        for k_in in range(kk):
                            if pixels[k_in] is not None:
                                row, col = pixels[k_in]
                                mixed = mixed + weights[head, k_out, k_in] * v[b, row, col, channel]
                        row, col = pixels[k_out]
                        out[b, row, col, channel] += mixed
    return out
