"""Involution (Li et al., "Involution: Inverting the Inherence of Convolution for Visual
Recognition", CVPR 2021) as one functional op with a reference and a fast implementation.

Every pixel p carries its own KxK kernel, shared by the C/G channels of each of G groups:

    out[p, c] = sum_{a, b in [0, K)} kernel[p, g(c), a*K + b] * x[p + (a - K//2, b - K//2), c]

with g(c) = c // (C/G) and x zero outside the image (stride 1, padding K//2). Channels-last:
x (B, H, W, C), kernel (B, H, W, G*K*K) laid out group-major (``kernel.view(B, H, W, G,
K*K)``), as the official code's ``kernel.view(b, G, K*K, h, w)`` in NCHW.

* ``'reference'``: the official formula, ``F.unfold`` of x into (B, G, C/G, K*K, H, W), times
  the kernel, summed over K*K; it holds the K*K*C*H*W neighbourhood (and autograd saves it).
* ``'fast'`` (``'auto'``): the op as its :func:`~mmvolo.ops.local_aggregate` configuration
  (per-position weights ``kernel.view(B, H, W, G, K*K)``, ``padding=K//2``, ``groups=G``),
  whose fast path runs the shifted-slice kernel (:mod:`.local_aggregate_kernels`,
  ``'shifted'``): saves only x and the kernel, recomputes per tap in backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import ImplRegistry
from .local_aggregate import check_kernel_size, check_tokens, local_aggregate

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


def involution_fast(x: torch.Tensor, kernel: torch.Tensor, kernel_size: int = 3,
                    groups: int = 1) -> torch.Tensor:
    """Involution through ``local_aggregate(impl='fast')``; shapes as the reference."""
    weight = kernel.unflatten(-1, (groups, kernel_size * kernel_size))
    return local_aggregate(x, weight, kernel_size, padding=kernel_size // 2, groups=groups,
                           impl='fast')


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
