"""Involution (Li et al., "Involution: Inverting the Inherence of Convolution for Visual
Recognition", CVPR 2021) as one functional op with a reference and a fast implementation.

Every pixel p carries its own KxK kernel, shared by the C/G channels of each of G groups:

    out[p, c] = sum_{a, b in [0, K)} kernel[p, g(c), a*K + b] * x[p + (a - K//2, b - K//2), c]

with g(c) = c // (C/G) and x zero outside the image (stride 1, padding K//2). Channels-last:
x (B, H, W, C), kernel (B, H, W, G*K*K) laid out group-major (``kernel.view(B, H, W, G,
K*K)``), as the official code's ``kernel.view(b, G, K*K, h, w)`` in NCHW.

* ``'reference'``: the official formula, ``F.unfold`` of x into (B, G, C/G, K*K, H, W), times
  the kernel, summed over K*K; it holds the K*K*C*H*W neighbourhood (and autograd saves it).
* ``'fast'`` (``'auto'``): a :class:`torch.autograd.Function` looping over the K*K offsets
  with in-place ``addcmul_`` on shifted slices (see :mod:`.window_utils`); it saves only x and
  the kernel, and its backward recomputes per offset:

      grad_x[q]            += kernel[p, g, k] * grad_out[p]          (q = p + offset k)
      grad_kernel[p, g, k]  = sum_{c in g} grad_out[p, c] * x[q, c]

  fp16/bf16 inputs are computed in fp32 (fp32/fp64 in themselves); it is once-differentiable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .custom_op import define_op
from .dispatch import ImplRegistry
from .window_utils import (
    check_kernel_size,
    check_tokens,
    compute_dtype,
    dot_last_into,
    row_blocks,
    window_offsets,
)

OP = 'involution'


def check_involution_inputs(x: torch.Tensor, kernel: torch.Tensor, kernel_size: int,
                            groups: int) -> None:
    """One-line ValueError when x, kernel, K and G do not fit together."""
    check_tokens(OP, 'x', x)
    check_kernel_size(OP, kernel_size)
    channels = x.shape[-1]
    if not isinstance(groups, int) or groups < 1 or channels % groups:
        raise ValueError(f'{OP}: channels {channels} must divide into groups={groups!r}')
    expected = (*x.shape[:3], groups * kernel_size * kernel_size)
    if tuple(kernel.shape) != expected:
        raise ValueError(f'{OP}: kernel shape {tuple(kernel.shape)} does not match x '
                         f'{tuple(x.shape)}; expected (B, H, W, groups*K*K) = {expected}')


def involution_reference(x: torch.Tensor, kernel: torch.Tensor, kernel_size: int = 3,
                         groups: int = 1) -> torch.Tensor:
    """The official formula: unfold x, multiply by the per-pixel kernel, sum over the window.

    Args:
        x: (B, H, W, C).
        kernel: (B, H, W, groups*K*K), group-major.
        kernel_size: window K (odd).
        groups: G; C must divide by it.

    Returns:
        (B, H, W, C), dtype of x.
    """
    batch, height, width, channels = x.shape
    kk = kernel_size * kernel_size
    x_unf = F.unfold(x.permute(0, 3, 1, 2), kernel_size, padding=kernel_size // 2)
    x_unf = x_unf.view(batch, groups, channels // groups, kk, height, width)
    ker = kernel.permute(0, 3, 1, 2).reshape(batch, groups, 1, kk, height, width)
    out = (ker * x_unf).sum(dim=3)  # (B, G, C/G, H, W)
    return out.reshape(batch, channels, height, width).permute(0, 2, 3, 1)


def involution_fast_forward(x: torch.Tensor, kernel: torch.Tensor, kernel_size: int,
                            groups: int) -> torch.Tensor:
    """Forward without autograd: K*K in-place ``addcmul_`` on shifted slices."""
    batch, height, width, channels = x.shape
    dtype = compute_dtype(x.dtype)
    xg = x.to(dtype).unflatten(-1, (groups, channels // groups))
    ker = kernel.to(dtype).unflatten(-1, (groups, kernel_size * kernel_size))
    out = xg.new_zeros(xg.shape)
    for block in row_blocks(x):
        for k, _, _, (rows, cols), (in_rows, in_cols) in window_offsets(kernel_size, height,
                                                                        width, block):
            out[:, rows, cols].addcmul_(xg[:, in_rows, in_cols],
                                        ker[:, rows, cols, :, k:k + 1])
    return out.flatten(-2).to(x.dtype)


def involution_fast_backward(grad_out: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor,
                             kernel_size: int, groups: int, need_x: bool = True,
                             need_kernel: bool = True
                             ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(grad_x (B, H, W, C), grad_kernel (B, H, W, G*K*K)), either None when not needed."""
    batch, height, width, channels = x.shape
    dtype = compute_dtype(x.dtype)
    split = (groups, channels // groups)
    g = grad_out.to(dtype).unflatten(-1, split)
    xg = x.to(dtype).unflatten(-1, split)
    ker = kernel.to(dtype).unflatten(-1, (groups, kernel_size * kernel_size))
    grad_x = xg.new_zeros(xg.shape) if need_x else None
    grad_ker = ker.new_zeros(ker.shape) if need_kernel else None
    blocks = row_blocks(x)
    scratch = xg.new_empty((batch, max(stop - start for start, stop in blocks),
                            *xg.shape[2:])) if need_kernel else None
    for block in blocks:
        for k, _, _, (rows, cols), (in_rows, in_cols) in window_offsets(kernel_size, height,
                                                                        width, block):
            g_k = g[:, rows, cols]
            if need_x:
                grad_x[:, in_rows, in_cols].addcmul_(g_k, ker[:, rows, cols, :, k:k + 1])
            if need_kernel:
                dot_last_into(grad_ker[:, rows, cols, :, k], g_k, xg[:, in_rows, in_cols],
                              scratch)
    return (None if grad_x is None else grad_x.flatten(-2).to(x.dtype),
            None if grad_ker is None else grad_ker.flatten(-2).to(kernel.dtype))


def _involution_backward(grad_out: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor,
                         kernel_size: int, groups: int, needs: tuple[bool, ...]) -> tuple:
    return involution_fast_backward(grad_out, x, kernel, kernel_size, groups, *needs)


#: The fast path as a differentiable custom op (:func:`~mmvolo.ops.custom_op.define_op`):
#: saves x and kernel only; the backward recomputes per window offset.
_involution_op = define_op('mmvolo::involution_fast', involution_fast_forward,
                           _involution_backward, num_inputs=2)


def involution_fast(x: torch.Tensor, kernel: torch.Tensor, kernel_size: int = 3,
                    groups: int = 1) -> torch.Tensor:
    """Memory-light involution (see the module docstring); shapes as the reference."""
    return _involution_op(x.contiguous(), kernel.contiguous(), kernel_size, groups)


#: The implementations of this op (:mod:`.dispatch`): 'fast' is the 'auto' choice.
INVOLUTION_IMPLS = ImplRegistry(OP)
INVOLUTION_IMPLS.register('reference')(involution_reference)
INVOLUTION_IMPLS.register('fast', priority=10)(involution_fast)


def involution(x: torch.Tensor, kernel: torch.Tensor, kernel_size: int = 3, groups: int = 1,
               impl: str | None = 'auto') -> torch.Tensor:
    """Involution of channels-last tokens with per-pixel kernels (module docstring: formula).

    Args:
        x: (B, H, W, C).
        kernel: (B, H, W, groups*K*K), group-major (``view(B, H, W, G, K*K)``).
        kernel_size: window K, odd; padding K//2, stride 1. Default: 3.
        groups: G, kernels shared by C/G channels each. Default: 1.
        impl: 'auto' (= 'fast', the default), 'fast' or 'reference'; see :mod:`.dispatch`
            (``impl=``, ``MMVOLO_<OP>_IMPL``, :func:`~mmvolo.ops.forced_impl`).

    Returns:
        (B, H, W, C), dtype of x.
    """
    INVOLUTION_IMPLS.check_name(impl)
    check_involution_inputs(x, kernel, kernel_size, groups)
    name = INVOLUTION_IMPLS.select(x, kernel, impl=impl)
    return INVOLUTION_IMPLS.run(name)(x, kernel, kernel_size, groups)


__all__ = ['INVOLUTION_IMPLS', 'involution', 'involution_fast', 'involution_reference',
           'check_involution_inputs']
