"""Outlook attention as one functional op with interchangeable implementations.

The op (VOLO, arXiv 2106.13112, Eq. 3-5) takes values ``v`` on the full token grid and
attention logits predicted per output-grid position, and returns the folded result:

    A[n]      = softmax(logits[n])                    # (heads, K*K, K*K), softmax over k_in
    Y[n, k_o] = sum_{k_in} A[n, k_o, k_in] * V[pos(n, k_in)]
    out[p]    = sum_{(n, k_o): pos(n, k_o) = p} Y[n, k_o]

with ``pos(n, k) = (i*S - P + k // K, j*S - P + k % K)`` for output-grid position
``n = (i, j)``, window offset ``k``, stride ``S`` and padding ``P``; positions outside the
image read zeros (V) or are dropped (out).

The dispatcher is :mod:`.dispatch` (one rule for every op): each implementation lives in its
own module and registers itself on :data:`OUTLOOK_IMPLS` through :func:`register_outlook_impl`
(name, ``supports(v, logits)`` and ``priority``); every one computes exactly the formula above,
and tests hold them equal to the reference. ``impl=`` / $MMVOLO_OUTLOOK_IMPL name one;
``'auto'`` takes the highest-priority one that supports the tensors; one that cannot run
warns (:class:`OutlookImplFallbackWarning`) and the ``'auto'`` choice runs instead.
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager
from typing import Callable

import torch

from .dispatch import ImplFallbackWarning, ImplRegistry, RegisteredImpl, SupportsFn

#: The implementations of outlook attention (and the rule choosing among them).
OUTLOOK_IMPLS = ImplRegistry('outlook attention', 'MMVOLO_OUTLOOK_IMPL')
IMPL_ENV_VAR = OUTLOOK_IMPLS.env_var
OutlookImpl = Callable[..., torch.Tensor]
#: An explicitly requested impl cannot run; the 'auto' choice runs (one warning class for
#: every op: :class:`mmvolo.ops.dispatch.ImplFallbackWarning`).
OutlookImplFallbackWarning = ImplFallbackWarning


def register_outlook_impl(name: str, supports: SupportsFn | None = None,
                          priority: int = 0) -> Callable[[OutlookImpl], OutlookImpl]:
    """Decorator registering an implementation (same signature as the reference) as ``name``.

    Args:
        name: what ``impl=`` / $MMVOLO_OUTLOOK_IMPL call it; re-registering replaces the entry.
        supports: ``supports(v, logits) -> None | reason``; None (the default) means it runs
            on any tensors.
        priority: ``'auto'`` takes the highest-priority impl that supports the tensors.
    """
    return OUTLOOK_IMPLS.register(name, supports, priority)


def register_unavailable_impl(name: str, reason: str, priority: int = 0) -> None:
    """Register ``name`` as known but unable to run in this process (e.g. missing package)."""
    OUTLOOK_IMPLS.register_unavailable(name, reason, priority)


def unregister_outlook_impl(name: str) -> RegisteredImpl | None:
    """Remove ``name`` from the registry; returns its entry (None if it was not registered)."""
    return OUTLOOK_IMPLS.unregister(name)


def temporary_outlook_impl(name: str, fn: OutlookImpl | None = None,
                           supports: SupportsFn | None = None, priority: int = 0,
                           unavailable: str | None = None) -> AbstractContextManager[None]:
    """Register ``fn`` (or, with ``fn=None``, an unavailable entry) as ``name`` for a block,
    then restore whatever was registered under ``name`` before (for tests)."""
    return OUTLOOK_IMPLS.temporary(name, fn, supports, priority, unavailable)


def available_impls() -> list[str]:
    """Registered impls that can run in this process (their names, sorted)."""
    return OUTLOOK_IMPLS.available()


def known_impls() -> list[str]:
    """Names accepted by ``impl=`` besides ``'auto'``, unavailable ones included (sorted)."""
    return OUTLOOK_IMPLS.known()


def unsupported_reason(name: str, v: torch.Tensor, logits: torch.Tensor) -> str | None:
    """None when registered impl ``name`` can run on ``v`` and ``logits``, else why not."""
    return OUTLOOK_IMPLS.unsupported_reason(name, v, logits)


def output_grid(height: int, width: int, stride: int) -> tuple[int, int]:
    """Size (h, w) of the grid on which attention weights are predicted: ceil(H/S), ceil(W/S)."""
    return math.ceil(height / stride), math.ceil(width / stride)


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
    """The impl that runs on ``v`` and ``logits`` (see :meth:`ImplRegistry.select`)."""
    return OUTLOOK_IMPLS.select(v, v if logits is None else logits, impl=impl)


def outlook_attention(v: torch.Tensor, logits: torch.Tensor, num_heads: int,
                      kernel_size: int = 3, padding: int = 1, stride: int = 1,
                      impl: str | None = None) -> torch.Tensor:
    """Outlook attention on channels-last tensors; see the module docstring for the formula.

    Args:
        v: values, (B, H, W, C).
        logits: scaled attention logits, (B, ceil(H/S), ceil(W/S), num_heads * K**4).
        num_heads: number of heads.
        kernel_size, padding, stride: window K, padding P, stride S.
        impl: 'auto' (default), or one of :func:`known_impls`; overrides
            $MMVOLO_OUTLOOK_IMPL.

    Returns:
        (B, H, W, C).
    """
    check_outlook_inputs(v, logits, num_heads, kernel_size, stride)
    name = OUTLOOK_IMPLS.select(v, logits, impl=impl)
    return OUTLOOK_IMPLS.run(name)(v, logits, num_heads, kernel_size, padding, stride)
