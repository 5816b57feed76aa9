"""Deformable aggregation in torchvision's layouts, and adapters for DCNv3 / DCNv4 layouts.

:func:`deform_aggregate` is :func:`~mmvolo.ops.local_aggregate.local_aggregate` with offsets,
taking and returning torchvision's NCHW tensors:

    out[b, c, i, j] = sum_k weight[b, g(c)*K*K + k, i, j]
                      * bilinear(value[b, c], (i*S - P + a*D + dy, j*S - P + b*D + dx))
    (dy, dx) = offset[b, 2*(g(c)*K*K + k) : 2*(g(c)*K*K + k) + 2, i, j],  k = a*K + b

i.e. ``torchvision.ops.deform_conv2d(value, offset, torch.ones(C, 1, K, K), groups=C,
mask=weight, stride=S, padding=P, dilation=D)``: G offset groups (G = offset.shape[1] /
(2*K*K), channel c in group g(c) = c // (C/G)), the mask's G*K*K channels the per-tap
weights (DCNv2's modulation; None = all ones, DCNv1).

Layout adapters (pure reshapes/permutes, each with its inverse; tested round trips). The
op's own layout (``local_aggregate``): offset (B, Ho, Wo, G, K*K, 2) with (dy, dx), taps
row-major (k = a*K + b, a the row); weight (B, Ho, Wo, G, K*K).

* torchvision: offset (B, 2*G*K*K, Ho, Wo), per group and tap (dy, dx), taps row-major;
  mask (B, G*K*K, Ho, Wo) - :func:`torchvision_to_aggregate` / :func:`aggregate_to_torchvision`.
* DCNv3 (InternImage): channels-last; offset (B, Ho, Wo, G*K*K*2) with **(x, y)** = (dx, dy)
  per point and points **column-major** (point p = b*K + a: the sampling grid is built
  x-outer); mask (B, Ho, Wo, G*K*K) in the same point order, softmax-normalised over the
  points of a group (``local_aggregate(..., normalize='softmax')``) -
  :func:`dcnv3_to_aggregate` / :func:`aggregate_to_dcnv3`.
* DCNv4: one fused channels-last ``offset_mask`` (B, Ho, Wo, L) with, per group, K*K (x, y)
  pairs in DCNv3's point order, then the group's K*K mask values (unnormalised), the G*3*K*K
  channels zero-padded to L = ceil(G*3*K*K / 8) * 8 - :func:`dcnv4_to_aggregate` /
  :func:`aggregate_to_dcnv4`.

These adapters convert layouts only; DCNv3/v4's ``offset_scale`` multiplies the offsets
before them, and their position conventions (dilation grid around the window centre,
padding) reduce to the same ``i*S - P + a*D`` tap grid when built with matching S, P, D.
"""
from __future__ import annotations

import torch

from .local_aggregate import local_aggregate

OP = 'deform_aggregate'


def _kk(kernel_size: int) -> int:
    return kernel_size * kernel_size


def torchvision_to_aggregate(offset: torch.Tensor, mask: torch.Tensor | None,
                             kernel_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torchvision (B, 2GKK, Ho, Wo), (B, GKK, Ho, Wo) -> (B, Ho, Wo, G, KK, 2), (B, Ho, Wo,
    G, KK)."""
    kk = _kk(kernel_size)
    batch, chans, out_h, out_w = offset.shape
    groups = chans // (2 * kk)
    off = offset.view(batch, groups, kk, 2, out_h, out_w).permute(0, 4, 5, 1, 2, 3)
    if mask is None:
        return off, None
    return off, mask.view(batch, groups, kk, out_h, out_w).permute(0, 3, 4, 1, 2)


def aggregate_to_torchvision(offset: torch.Tensor, weight: torch.Tensor | None
                             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inverse of :func:`torchvision_to_aggregate`."""
    batch, out_h, out_w, groups, kk, _ = offset.shape
    off = offset.permute(0, 3, 4, 5, 1, 2).reshape(batch, groups * kk * 2, out_h, out_w)
    if weight is None:
        return off, None
    return off, weight.permute(0, 3, 4, 1, 2).reshape(batch, groups * kk, out_h, out_w)


def _col_to_row(kernel_size: int, device: torch.device) -> torch.Tensor:
    """perm with row-major tap k = a*K + b at column-major point p = perm[k] = b*K + a."""
    k = torch.arange(_kk(kernel_size), device=device)
    return (k % kernel_size) * kernel_size + k // kernel_size


def dcnv3_to_aggregate(offset: torch.Tensor, mask: torch.Tensor, kernel_size: int,
                       groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DCNv3 offset (B, Ho, Wo, G*KK*2) (x, y), mask (B, Ho, Wo, G*KK), points column-major
    -> (B, Ho, Wo, G, KK, 2) (dy, dx), (B, Ho, Wo, G, KK), taps row-major."""
    kk = _kk(kernel_size)
    _check_last(offset, groups * kk * 2, 'DCNv3 offset (B, Ho, Wo, G*K*K*2)')
    _check_last(mask, groups * kk, 'DCNv3 mask (B, Ho, Wo, G*K*K)')
    perm = _col_to_row(kernel_size, offset.device)
    off = offset.unflatten(-1, (groups, kk, 2))[..., perm, :].flip(-1)
    return off, mask.unflatten(-1, (groups, kk))[..., perm]


def aggregate_to_dcnv3(offset: torch.Tensor, weight: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`dcnv3_to_aggregate`."""
    kernel_size = int(round(offset.shape[4] ** 0.5))
    inv = torch.argsort(_col_to_row(kernel_size, offset.device))
    return offset.flip(-1)[..., inv, :].flatten(-3), weight[..., inv].flatten(-2)


def dcnv4_channels(kernel_size: int, groups: int) -> int:
    """L: DCNv4's offset_mask width, G*3*K*K rounded up to a multiple of 8."""
    return -(-groups * 3 * _kk(kernel_size) // 8) * 8


def dcnv4_to_aggregate(offset_mask: torch.Tensor, kernel_size: int,
                       groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DCNv4 fused (B, Ho, Wo, L) -> offset (B, Ho, Wo, G, KK, 2), weight (B, Ho, Wo, G, KK)."""
    kk = _kk(kernel_size)
    _check_last(offset_mask, dcnv4_channels(kernel_size, groups),
                f'DCNv4 offset_mask (B, Ho, Wo, ceil(G*3*K*K/8)*8) for G={groups}, '
                f'K={kernel_size}')
    per_group = offset_mask[..., :groups * 3 * kk].unflatten(-1, (groups, 3 * kk))
    off = per_group[..., :2 * kk].flatten(-2)
    mask = per_group[..., 2 * kk:].flatten(-2)
    return dcnv3_to_aggregate(off, mask, kernel_size, groups)


def aggregate_to_dcnv4(offset: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dcnv4_to_aggregate` (padding channels zero)."""
    batch, out_h, out_w, groups, kk, _ = offset.shape
    kernel_size = int(round(kk ** 0.5))
    off, mask = aggregate_to_dcnv3(offset, weight)
    fused = torch.cat([off.unflatten(-1, (groups, 2 * kk)), mask.unflatten(-1, (groups, kk))],
                      dim=-1).flatten(-2)
    pad = dcnv4_channels(kernel_size, groups) - fused.shape[-1]
    return torch.cat([fused, fused.new_zeros(batch, out_h, out_w, pad)], dim=-1)


def _check_last(t: torch.Tensor, size: int, what: str) -> None:
    if t.dim() != 4 or t.shape[-1] != size:
        raise ValueError(f'{OP}: expected {what} with last dim {size}; got {tuple(t.shape)}')


def deform_aggregate(value: torch.Tensor, offset: torch.Tensor,
                     weight: torch.Tensor | None, kernel_size: int, stride: int = 1,
                     padding: int = 0, dilation: int = 1,
                     impl: str | None = None) -> torch.Tensor:
    """Deformable aggregation in torchvision's layouts (module docstring: the formula).

    Args:
        value: (B, C, H, W).
        offset: (B, 2*G*K*K, Ho, Wo), (dy, dx) per group and tap, taps row-major.
        weight: (B, G*K*K, Ho, Wo) per-tap weights (torchvision's ``mask``), or None (ones).
        kernel_size, stride, padding, dilation: K, S, P, D (Ho = floor((H + 2P - D(K-1) - 1)
            / S) + 1).
        impl: 'auto' (= 'fast'), 'fast' or 'reference'.

    Returns:
        (B, C, Ho, Wo) = ``deform_conv2d(value, offset, ones(C, 1, K, K), groups=C,
        mask=weight, ...)``.
    """
    if value.dim() != 4:
        raise ValueError(f'{OP}: value must be NCHW (B, C, H, W), got {tuple(value.shape)}')
    kk = _kk(kernel_size) if isinstance(kernel_size, int) else 0
    if kk < 1:
        raise ValueError(f'{OP}: kernel_size must be an int >= 1, got {kernel_size!r}')
    batch, channels = value.shape[:2]
    if offset.dim() != 4 or offset.shape[0] != batch or offset.shape[1] % (2 * kk) \
            or offset.shape[1] == 0:
        raise ValueError(f'{OP}: offset must be (B, 2*G*K*K, Ho, Wo) with B={batch}, '
                         f'2*K*K={2 * kk}; got {tuple(offset.shape)}')
    groups = offset.shape[1] // (2 * kk)
    if weight is not None and tuple(weight.shape) != (batch, groups * kk, *offset.shape[2:]):
        raise ValueError(f'{OP}: weight (mask) must be (B, G*K*K, Ho, Wo) = '
                         f'{(batch, groups * kk, *offset.shape[2:])}; got '
                         f'{tuple(weight.shape)}')
    off, w = torchvision_to_aggregate(offset, weight, kernel_size)
    if w is None:
        w = value.new_ones(groups, kk)
    out = local_aggregate(value.permute(0, 2, 3, 1), w, kernel_size, stride, padding,
                          dilation, groups, offset=off, impl=impl)
    return out.permute(0, 3, 1, 2)


__all__ = ['deform_aggregate', 'torchvision_to_aggregate', 'aggregate_to_torchvision',
           'dcnv3_to_aggregate', 'aggregate_to_dcnv3', 'dcnv4_to_aggregate',
           'aggregate_to_dcnv4', 'dcnv4_channels']
