"""Literal, pixel-by-pixel implementations of the local token-mixer ops (ground truth).

Independent of mmvolo's code: explicit loops over batch, pixels, window offsets (and heads),
vectors only along channels; tiny inputs only. Channels-last tensors (B, H, W, C); windows
are centred (offset (a, b) of pixel (i, j) is pixel (i + a - K//2, j + b - K//2)).

* involution: out[p, c] = sum_window kernel[p, group(c), a*K+b] * x[neighbour, c]
  (neighbours outside the image contribute nothing, i.e. zero padding);
* local attention (SASA): softmax over the neighbours *inside* the image of
  q[p] . (k[neighbour] + concat(rel_h[a], rel_w[b])) per head; out = sum attn * v;
* depthwise conv: out[p, c] = bias[c] + sum_window weight[c, 0, a, b] * x[neighbour, c].
"""
from __future__ import annotations

import torch


def _neighbours(i: int, j: int, height: int, width: int, kernel_size: int):
    """(a, b, row, col) for every window offset of pixel (i, j) that lies in the image."""
    pad = kernel_size // 2
    for a in range(kernel_size):
        for b in range(kernel_size):
            row, col = i + a - pad, j + b - pad
            if 0 <= row < height and 0 <= col < width:
                yield a, b, row, col


def literal_involution(x: torch.Tensor, kernel: torch.Tensor, kernel_size: int,
                       groups: int) -> torch.Tensor:
    """x (B, H, W, C), kernel (B, H, W, groups*K*K) -> (B, H, W, C)."""
    batch, height, width, channels = x.shape
    per_group = channels // groups
    kk = kernel_size * kernel_size
    rows = []
    for n in range(batch):
        for i in range(height):
            for j in range(width):
                pixel = []
                for g in range(groups):
                    acc = torch.zeros(per_group, dtype=x.dtype)
                    for a, b, row, col in _neighbours(i, j, height, width, kernel_size):
                        weight = kernel[n, i, j, g * kk + a * kernel_size + b]
                        acc = acc + weight * x[n, row, col, g * per_group:(g + 1) * per_group]
                    pixel.append(acc)
                rows.append(torch.cat(pixel))
    return torch.stack(rows).reshape(batch, height, width, channels)


def literal_local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            rel_h: torch.Tensor, rel_w: torch.Tensor, num_heads: int,
                            kernel_size: int) -> torch.Tensor:
    """Pre-scaled q, k, v (B, H, W, C), rel_h/rel_w (K, d/2) -> (B, H, W, C)."""
    batch, height, width, channels = q.shape
    head_dim = channels // num_heads
    rows = []
    for n in range(batch):
        for i in range(height):
            for j in range(width):
                pixel = []
                for h in range(num_heads):
                    chans = slice(h * head_dim, (h + 1) * head_dim)
                    logits, values = [], []
                    for a, b, row, col in _neighbours(i, j, height, width, kernel_size):
                        rel = torch.cat([rel_h[a], rel_w[b]])
                        logits.append((q[n, i, j, chans] * (k[n, row, col, chans] + rel)).sum())
                        values.append(v[n, row, col, chans])
                    weights = torch.softmax(torch.stack(logits), dim=0)
                    acc = torch.zeros(head_dim, dtype=q.dtype)
                    for weight, value in zip(weights, values):
                        acc = acc + weight * value
                    pixel.append(acc)
                rows.append(torch.cat(pixel))
    return torch.stack(rows).reshape(batch, height, width, channels)


def literal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor | None) -> torch.Tensor:
    """x (B, H, W, C), weight (C, 1, K, K), bias (C,) or None -> (B, H, W, C)."""
    batch, height, width, channels = x.shape
    kernel_size = weight.shape[-1]
    rows = []
    for n in range(batch):
        for i in range(height):
            for j in range(width):
                acc = torch.zeros(channels, dtype=x.dtype)
                if bias is not None:
                    acc = acc + bias
                for a, b, row, col in _neighbours(i, j, height, width, kernel_size):
                    acc = acc + weight[:, 0, a, b] * x[n, row, col]
                rows.append(acc)
    return torch.stack(rows).reshape(batch, height, width, channels)
