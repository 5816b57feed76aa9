"""The reference outlook attention (unfold -> softmax(A) @ V -> fold), registered as
``'reference'`` with the lowest priority: it runs on any tensors, so ``'auto'`` falls back
to it when nothing faster can take them."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .outlook import output_grid, register_outlook_impl

PRIORITY = 0


@register_outlook_impl('reference', priority=PRIORITY)
def outlook_attention_reference(v: torch.Tensor, logits: torch.Tensor, num_heads: int,
                                kernel_size: int = 3, padding: int = 1,
                                stride: int = 1) -> torch.Tensor:
    """Unfold -> softmax(A) @ V -> fold, as the official VOLO code does it (ground truth).

    Args:
        v: values, (B, H, W, C).
        logits: scaled attention logits, (B, h, w, num_heads * K**4) with
            (h, w) = ceil(H/S), ceil(W/S).
        num_heads: number of heads; C must divide by it.
        kernel_size, padding, stride: window K, padding P, stride S.

    Returns:
        (B, H, W, C), same dtype as ``v``.
    """
    batch, height, width, channels = v.shape
    h, w = output_grid(height, width, stride)
    kk = kernel_size * kernel_size
    head_dim = channels // num_heads
    v_unf = F.unfold(v.permute(0, 3, 1, 2), kernel_size, padding=padding, stride=stride)
    v_unf = v_unf.reshape(batch, num_heads, head_dim, kk, h * w).permute(0, 1, 4, 3, 2)
    attn = logits.reshape(batch, h * w, num_heads, kk, kk).permute(0, 2, 1, 3, 4)
    attn = attn.softmax(dim=-1)
    y = (attn @ v_unf).permute(0, 1, 4, 3, 2).reshape(batch, channels * kk, h * w)
    out = F.fold(y, (height, width), kernel_size, padding=padding, stride=stride)
    return out.permute(0, 2, 3, 1)
