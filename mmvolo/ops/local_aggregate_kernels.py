"""Specialised CPU kernels behind ``local_aggregate(impl='fast')`` for the configurations the
generic block loop (:mod:`.local_aggregate_fast`) serves slower; :func:`special_kernel`
is the rule that picks one (none: the generic loop runs):

* ``'conv'`` - static weights, no offsets, no fold, zeros boundary (depthwise convolution,
  any K, S, P, D, G): ``F.conv2d(groups=C)`` on the channels-last view of value, with the
  per-channel kernel ``A.repeat_interleave(C/G)`` (``A = softmax(weight)`` or ``weight``);
  autograd differentiates it.
* ``'shifted'`` - dynamic weights, no offsets, no fold, zeros boundary, stride 1
  (involution, SASA's aggregation): per block of output rows and tap k, one in-place
  ``addcmul_`` of the rectangle of pixels whose tap lies inside the image
  (:meth:`~.local_aggregate.Geometry.tap_slices`; no padded copy, no unfold); a custom op
  saving value and weight, whose backward recomputes per tap

      grad_V[pos(n, k)]  += A[n, g, k] * grad_out[n]
      grad_A[n, g, k]     = sum_{c in g} grad_out[n, c] * V[pos(n, k), c]

  (then the softmax backward for ``normalize='softmax'``).
* ``'chunked'`` - dynamic weights, ``normalize='softmax'``, ``fold=True``, no offsets,
  dilation 1, the grid ceil(H/S) x ceil(W/S) (outlook attention): outlook's chunked kernel
  (:mod:`.outlook_chunked`, worker threads and per-chunk recompute).

fp16/bf16 are computed in fp32 (``'conv'``: in the input dtype, as ``F.conv2d`` does).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .custom_op import define_op
from .local_aggregate import Geometry, geometry_of
from .tiling import compute_dtype, row_blocks

Kernel = Callable[..., torch.Tensor]


def special_kernel(geom: Geometry, offset: torch.Tensor | None, normalize: str | None,
                   fold: bool, static: bool) -> str | None:
    """The name of the specialised kernel for this configuration, or None (generic)."""
    if offset is not None or geom.boundary != 'zeros':
        return None
    if fold:
        ceil_grid = (geom.out_h, geom.out_w) == (math.ceil(geom.height / geom.stride),
                                                 math.ceil(geom.width / geom.stride))
        if not static and normalize == 'softmax' and geom.dilation == 1 and ceil_grid:
            return 'chunked'
        return None
    if static:
        return 'conv'
    return 'shifted' if geom.stride == 1 else None


def softmax_last(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last dim from elementwise ops (``Tensor.softmax`` on CPU is
    ~20x slower when that dim is this short: it vectorizes along it)."""
    e = (x - x.amax(dim=-1, keepdim=True)).exp_()
    return e.div_(e.sum(dim=-1, keepdim=True))


def softmax_last_backward(grad: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """d loss / d logits from d loss / d attn (in place on ``grad``)."""
    return grad.sub_((grad * attn).sum(dim=-1, keepdim=True)).mul_(attn)


def dot_last_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                  scratch: torch.Tensor) -> None:
    """``out[...] = (a * b).sum(-1)``, the product written into ``scratch`` (a buffer at least
    as large as ``a`` in every dim, reused across the taps of one call): a fresh product per
    tap is new pages above the allocator's mmap threshold, whose faults cost more than the
    arithmetic at D1 stage-1 sizes."""
    product = scratch[tuple(slice(0, size) for size in a.shape)]
    torch.mul(a, b, out=product)
    torch.sum(product, dim=-1, out=out)


# ------------------------------------------------------------------------------------------
# 'conv'
# ------------------------------------------------------------------------------------------

def conv_kernel(value: torch.Tensor, weight: torch.Tensor, geom: Geometry, groups: int,
                normalize: str | None) -> torch.Tensor:
    """Static weights (G, K*K) as a depthwise ``F.conv2d``; (B, Ho, Wo, C)."""
    channels, size = geom.channels, geom.kernel_size
    attn = weight.softmax(dim=-1) if normalize == 'softmax' else weight
    if groups != channels:
        attn = attn.repeat_interleave(channels // groups, dim=0)
    out = F.conv2d(value.permute(0, 3, 1, 2), attn.to(value.dtype).view(channels, 1, size, size),
                   stride=geom.stride, padding=geom.padding, dilation=geom.dilation,
                   groups=channels)
    return out.permute(0, 2, 3, 1)


# ------------------------------------------------------------------------------------------
# 'shifted'
# ------------------------------------------------------------------------------------------

def _shifted_inputs(value: torch.Tensor, weight: torch.Tensor, geom: Geometry, groups: int,
                    normalize: int) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = compute_dtype(value.dtype)
    xg = value.to(dtype).unflatten(-1, (groups, geom.channels // groups))
    attn = weight.to(dtype)
    return xg, softmax_last(attn) if normalize else attn


def shifted_forward(value: torch.Tensor, weight: torch.Tensor, kernel_size: int,
                    padding: int, dilation: int, groups: int, normalize: int) -> torch.Tensor:
    """(B, Ho, Wo, C): K*K in-place ``addcmul_`` on the taps' rectangles per row block."""
    geom = geometry_of(value.shape, kernel_size, 1, padding, dilation, 'zeros')
    xg, attn = _shifted_inputs(value, weight, geom, groups, normalize)
    out = xg.new_zeros(geom.batch, geom.out_h, geom.out_w, *xg.shape[-2:])
    for block in row_blocks(out.flatten(-2)):
        for k in range(geom.taps):
            slices = geom.tap_slices(k, block)
            if slices is None:
                continue
            (rows, cols), (in_rows, in_cols) = slices
            out[:, rows, cols].addcmul_(xg[:, in_rows, in_cols], attn[:, rows, cols, :, k:k + 1])
    return out.flatten(-2).to(value.dtype)


def shifted_backward(grad_out: torch.Tensor, value: torch.Tensor, weight: torch.Tensor,
                     kernel_size: int, padding: int, dilation: int, groups: int,
                     normalize: int, needs: tuple[bool, ...]) -> tuple:
    """(grad_value, grad_weight), None where ``needs`` says not wanted."""
    need_v, need_w = needs[:2]
    geom = geometry_of(value.shape, kernel_size, 1, padding, dilation, 'zeros')
    xg, attn = _shifted_inputs(value, weight, geom, groups, normalize)
    g = grad_out.to(xg.dtype).unflatten(-1, xg.shape[-2:])
    grad_x = xg.new_zeros(xg.shape) if need_v else None
    grad_a = attn.new_zeros(attn.shape) if need_w else None
    blocks = row_blocks(grad_out)
    scratch = xg.new_empty((geom.batch, max(stop - start for start, stop in blocks),
                            *g.shape[2:])) if need_w else None
    for block in blocks:
        for k in range(geom.taps):
            slices = geom.tap_slices(k, block)
            if slices is None:
                continue
            (rows, cols), (in_rows, in_cols) = slices
            g_k = g[:, rows, cols]
            if need_v:
                grad_x[:, in_rows, in_cols].addcmul_(g_k, attn[:, rows, cols, :, k:k + 1])
            if need_w:
                dot_last_into(grad_a[:, rows, cols, :, k], g_k, xg[:, in_rows, in_cols],
                              scratch)
    if grad_a is not None and normalize:
        softmax_last_backward(grad_a, attn)
    return (None if grad_x is None else grad_x.flatten(-2).to(value.dtype),
            None if grad_a is None else grad_a.to(weight.dtype))


def _shifted_fake(value: torch.Tensor, weight: torch.Tensor, kernel_size: int, padding: int,
                  dilation: int, groups: int, normalize: int) -> torch.Tensor:
    return value.new_empty((*weight.shape[:3], value.shape[-1]))


_shifted_op = define_op('mmvolo::local_aggregate_shifted', shifted_forward, shifted_backward,
                        num_inputs=2, fake=_shifted_fake)


def shifted_kernel(value: torch.Tensor, weight: torch.Tensor, geom: Geometry, groups: int,
                   normalize: str | None) -> torch.Tensor:
    """Dynamic weights (B, Ho, Wo, G, K*K), stride 1; (B, Ho, Wo, C)."""
    return _shifted_op(value.contiguous(), weight.contiguous(), geom.kernel_size, geom.padding,
                       geom.dilation, groups, int(normalize == 'softmax'))


# ------------------------------------------------------------------------------------------
# 'chunked'
# ------------------------------------------------------------------------------------------

def chunked_kernel(value: torch.Tensor, weight: torch.Tensor, geom: Geometry, groups: int,
                   normalize: str | None) -> torch.Tensor:
    """Outlook's fold with softmax: (B, H, W, C) by :mod:`.outlook_chunked`'s kernel."""
    from .outlook_chunked import chunked_fold  # registers outlook's 'chunked'; imports this
    return chunked_fold(value, weight.flatten(3), groups, geom.kernel_size, geom.padding,
                        geom.stride)


KERNELS: dict[str, Kernel] = {'conv': conv_kernel, 'shifted': shifted_kernel,
                              'chunked': chunked_kernel}

__all__ = ['special_kernel', 'KERNELS', 'conv_kernel', 'shifted_kernel', 'chunked_kernel',
           'softmax_last', 'softmax_last_backward', 'dot_last_into']
