"""Outlook attention as one functional op with interchangeable implementations.

The op (VOLO, arXiv 2106.13112, Eq. 3-5) takes values ``v`` on the full token grid and
attention logits predicted per output-grid position, and returns the folded result:

    A[n]      = softmax(logits[n])                    # (heads, K*K, K*K), softmax over k_in
    Y[n, k_o] = sum_{k_in} A[n, k_o, k_in] * V[pos(n, k_in)]
    out[p]    = sum_{(n, k_o): pos(n, k_o) = p} Y[n, k_o]

with ``pos(n, k) = (i*S - P + k // K, j*S - P + k % K)`` for output-grid position
``n = (i, j)``, window offset ``k``, stride ``S`` and padding ``P``; positions outside the
image read zeros (V) or are dropped (out).

Every implementation registered here computes exactly this; tests hold them equal to
:func:`outlook_attention_reference`. Select one with ``impl=...`` or the ``MMVOLO_OUTLOOK_IMPL``
environment variable; ``'auto'`` picks the fastest available for the tensors at hand.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Dict

import torch
import torch.nn.functional as F

IMPL_ENV_VAR = 'MMVOLO_OUTLOOK_IMPL'
# Accepted even when not registered (missing optional dependency): they resolve to 'auto'.
OPTIONAL_IMPLS = frozenset({'triton'})

OutlookImpl = Callable[..., torch.Tensor]
SupportsFn = Callable[[torch.Tensor, torch.Tensor], bool]
_IMPLS: Dict[str, OutlookImpl] = {}
_SUPPORTS: Dict[str, SupportsFn] = {}


def register_outlook_impl(name: str,
                          supports: SupportsFn | None = None) -> Callable[[OutlookImpl],
                                                                         OutlookImpl]:
    """Decorator adding an implementation under ``name`` (same signature as the reference).

    ``supports(v, logits)``, when given, tells whether the implementation can run on those
    tensors (device, dtype, installed packages); when it says no, the dispatcher falls back
    to the 'auto' choice for them instead.
    """

    def _register(fn: OutlookImpl) -> OutlookImpl:
        _IMPLS[name] = fn
        if supports is not None:
            _SUPPORTS[name] = supports
        return fn

    return _register


def impl_supports(name: str, v: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether registered implementation ``name`` can run on ``v`` and ``logits``."""
    check = _SUPPORTS.get(name)
    return check is None or check(v, logits)


def available_impls() -> list[str]:
    """Names accepted by ``impl=`` (besides ``'auto'``)."""
    return sorted(_IMPLS)


def output_grid(height: int, width: int, stride: int) -> tuple[int, int]:
    """Size (h, w) of the grid on which attention weights are predicted: ceil(H/S), ceil(W/S)."""
    return math.ceil(height / stride), math.ceil(width / stride)


@register_outlook_impl('reference')
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


def check_outlook_inputs(v: torch.Tensor, logits: torch.Tensor, num_heads: int,
                         kernel_size: int, stride: int) -> None:
    """Raise a one-line ValueError when ``v`` and ``logits`` do not fit together."""
    if v.dim() != 4 or logits.dim() != 4:
        raise ValueError(f'outlook_attention expects v (B, H, W, C) and logits (B, h, w, '
                         f'heads*K^4); got v {tuple(v.shape)} and logits {tuple(logits.shape)}')
    batch, height, width, channels = v.shape
    if channels % num_heads:
        raise ValueError(f'outlook_attention: channels {channels} do not divide into '
                         f'{num_heads} heads')
    expected = (batch, *output_grid(height, width, stride), num_heads * kernel_size ** 4)
    if tuple(logits.shape) != expected:
        raise ValueError(f'outlook_attention: logits shape {tuple(logits.shape)} does not match '
                         f'v {tuple(v.shape)}; expected {expected}')


def select_impl(v: torch.Tensor, impl: str | None = None,
                logits: torch.Tensor | None = None) -> str:
    """Resolve ``impl`` (argument, else $MMVOLO_OUTLOOK_IMPL, else 'auto') to a registered name.

    A known name whose implementation cannot run on these tensors (e.g. 'triton' on CPU
    tensors or float64, or without triton installed) resolves to the 'auto' choice instead;
    an unknown name raises.
    """
    name = impl or os.environ.get(IMPL_ENV_VAR, 'auto')
    if name != 'auto' and name not in _IMPLS and name not in OPTIONAL_IMPLS:
        raise ValueError(f"unknown outlook attention impl '{name}'; choose one of "
                         f"{['auto', *available_impls()]}")
    logits = v if logits is None else logits
    if name not in _IMPLS or not impl_supports(name, v, logits):
        return _auto_impl(v, logits)
    return name


def _auto_impl(v: torch.Tensor, logits: torch.Tensor | None = None) -> str:
    """Fastest implementation available for ``v``'s device (falls back to the reference)."""
    logits = v if logits is None else logits
    preference = ['triton', 'chunked'] if v.is_cuda else ['chunked']
    for name in preference:
        if name in _IMPLS and impl_supports(name, v, logits):
            return name
    return 'reference'


def outlook_attention(v: torch.Tensor, logits: torch.Tensor, num_heads: int,
                      kernel_size: int = 3, padding: int = 1, stride: int = 1,
                      impl: str | None = None) -> torch.Tensor:
    """Outlook attention on channels-last tensors; see the module docstring for the formula.

    Args:
        v: values, (B, H, W, C).
        logits: scaled attention logits, (B, ceil(H/S), ceil(W/S), num_heads * K**4).
        num_heads: number of heads.
        kernel_size, padding, stride: window K, padding P, stride S.
        impl: 'auto' (default), or one of :func:`available_impls`; overrides
            $MMVOLO_OUTLOOK_IMPL.

    Returns:
        (B, H, W, C).
    """
    check_outlook_inputs(v, logits, num_heads, kernel_size, stride)
    name = select_impl(v, impl, logits)
    return _IMPLS[name](v, logits, num_heads, kernel_size, padding, stride)
