"""Depthwise KxK convolution of channels-last tokens as one functional op (reference + fast).

    out[p, c] = bias[c] + sum_{a, b in [0, K)} weight[c, 0, a, b] * x[p + (a - K//2, b - K//2), c]

with x zero outside the image (stride 1, padding K//2); ``weight`` has ``nn.Conv2d``'s layout
(C, 1, K, K) for ``groups=C``.

* ``'reference'``: the formula with ``F.unfold`` of x into (B, C, K*K, H, W) (holds the
  K*K*C*H*W neighbourhood).
* ``'fast'`` (``'auto'``): the op as its :func:`~mmvolo.ops.local_aggregate` configuration
  (static weights ``weight.view(C, K*K)``, ``groups=C``, ``padding=K//2``), whose fast path
  is ``F.conv2d(groups=C)`` on the channels-last view of x (:mod:`.local_aggregate_kernels`,
  ``'conv'``); the bias is added after.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import ImplRegistry
from .local_aggregate import check_kernel_size, check_tokens, local_aggregate

OP = 'depthwise_conv'


def check_depthwise_conv_inputs(x: torch.Tensor, weight: torch.Tensor,
                                bias: torch.Tensor | None) -> None:
    """One-line ValueError when x, weight and bias do not fit together."""
    check_tokens(OP, 'x', x)
    channels = x.shape[-1]
    if weight.dim() != 4 or weight.shape[0] != channels or weight.shape[1] != 1 \
            or weight.shape[2] != weight.shape[3]:
        raise ValueError(f'{OP}: weight must be (C, 1, K, K) with C = {channels}; got '
                         f'{tuple(weight.shape)}')
    check_kernel_size(OP, int(weight.shape[-1]))
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(f'{OP}: bias must be (C,) = ({channels},); got {tuple(bias.shape)}')


def depthwise_conv_reference(x: torch.Tensor, weight: torch.Tensor,
                             bias: torch.Tensor | None = None) -> torch.Tensor:
    """Unfold x, weight each window position, sum over the window.

    Args:
        x: (B, H, W, C).
        weight: (C, 1, K, K), K odd.
        bias: (C,) or None.

    Returns:
        (B, H, W, C).
    """
    batch, height, width, channels = x.shape
    size = int(weight.shape[-1])
    x_unf = F.unfold(x.permute(0, 3, 1, 2), size, padding=size // 2)
    x_unf = x_unf.view(batch, channels, size * size, height, width)
    out = (x_unf * weight.reshape(1, channels, size * size, 1, 1)).sum(dim=2)
    if bias is not None:
        out = out + bias.view(1, channels, 1, 1)
    return out.permute(0, 2, 3, 1)


def depthwise_conv_fast(x: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise conv through ``local_aggregate(impl='fast')``; shapes as the reference."""
    channels, size = x.shape[-1], int(weight.shape[-1])
    out = local_aggregate(x, weight.view(channels, size * size), size, padding=size // 2,
                          groups=channels, impl='fast')
    return out if bias is None else out.add_(bias)


#: The implementations of this op (:mod:`.dispatch`): 'fast' is the 'auto' choice.
DEPTHWISE_CONV_IMPLS = ImplRegistry(OP)
DEPTHWISE_CONV_IMPLS.register('reference')(depthwise_conv_reference)
DEPTHWISE_CONV_IMPLS.register('fast', priority=10)(depthwise_conv_fast)


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   impl: str | None = 'auto') -> torch.Tensor:
    """Depthwise KxK convolution of channels-last tokens (module docstring: the formula).

    Args:
        x: (B, H, W, C).
        weight: (C, 1, K, K), K odd (``nn.Conv2d(C, C, K, groups=C).weight``).
        bias: (C,) or None. Default: None.
        impl: 'auto' (= 'fast', the default), 'fast' or 'reference'; see :mod:`.dispatch`
            (``impl=``, ``MMVOLO_<OP>_IMPL``, :func:`~mmvolo.ops.forced_impl`).

    Returns:
        (B, H, W, C).
    """
    DEPTHWISE_CONV_IMPLS.check_name(impl)
    check_depthwise_conv_inputs(x, weight, bias)
    name = DEPTHWISE_CONV_IMPLS.select(x, weight, impl=impl)
    return DEPTHWISE_CONV_IMPLS.run(name)(x, weight, bias)


__all__ = ['DEPTHWISE_CONV_IMPLS', 'depthwise_conv', 'depthwise_conv_fast',
           'depthwise_conv_reference',
           'check_depthwise_conv_inputs']
