"""Outlook attention as one functional op with interchangeable implementations.

The op (VOLO, arXiv 2106.13112, Eq. 3-5) takes values ``v`` on the full token grid and
attention logits predicted per output-grid position, and returns the folded result:

    A[n]      = softmax(logits[n])                    # (heads, K*K, K*K), softmax over k_in
    Y[n, k_o] = sum_{k_in} A[n, k_o, k_in] * V[pos(n, k_in)]
    out[p]    = sum_{(n, k_o): pos(n, k_o) = p} Y[n, k_o]

with ``pos(n, k) = (i*S - P + k // K, j*S - P + k % K)`` for output-grid position
``n = (i, j)``, window offset ``k``, stride ``S`` and padding ``P``; positions outside the
image read zeros (V) or are dropped (out).

This module is the dispatcher only; it names no implementation. Each implementation lives in
its own module and registers itself with :func:`register_outlook_impl` (name, ``supports``
and ``priority``); every one computes exactly the formula above, and tests hold them equal
to the reference. Selection, for the tensors at hand:

* ``'auto'`` (the default): the highest-priority registered impl whose ``supports(v, logits)``
  returns ``None`` (the reference registers with the lowest priority and supports everything,
  so it is the last resort). The choice is logged at debug level on ``mmvolo.ops``.
* an explicit name (``impl=`` argument, else $MMVOLO_OUTLOOK_IMPL): that impl when it can run;
  otherwise the ``'auto'`` choice runs and an :class:`OutlookImplFallbackWarning` says which
  impl was requested, why it cannot run and what runs instead - once per (impl, reason).
  Optional impls whose dependency is missing register as known-but-unavailable
  (:func:`register_unavailable_impl`), so their names are accepted and take this path.
* an unknown name raises a one-line ValueError listing the registered names.

``torch.compile``: the decision is plain Python on tensor attributes (device, dtype), so
dynamo resolves it while tracing, without a graph break; warning and logging run through
:func:`torch.compiler.assume_constant_result`-marked functions, i.e. once at trace time.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

IMPL_ENV_VAR = 'MMVOLO_OUTLOOK_IMPL'
logger = logging.getLogger('mmvolo.ops')

OutlookImpl = Callable[..., torch.Tensor]
#: ``supports(v, logits)``: None when the impl can run on these tensors, else a short reason
#: (e.g. ``'CPU tensors'``). Keep it plain Python on tensor attributes (torch.compile).
SupportsFn = Callable[[torch.Tensor, torch.Tensor], Optional[str]]


class OutlookImplFallbackWarning(UserWarning):
    """An explicitly requested outlook-attention impl cannot run; another one runs instead."""


@dataclass(frozen=True)
class RegisteredImpl:
    """One registry entry; ``fn`` is None for a known impl that is unavailable here."""

    name: str
    fn: OutlookImpl | None
    supports: SupportsFn | None
    priority: int
    unavailable: str | None = None  # why ``fn`` is None

    def reason_not_to_run(self, v: torch.Tensor, logits: torch.Tensor) -> str | None:
        """None when this impl can run on ``v`` and ``logits``, else why not."""
        if self.fn is None:
            return self.unavailable
        return None if self.supports is None else self.supports(v, logits)


_REGISTRY: Dict[str, RegisteredImpl] = {}
_BY_PRIORITY: Tuple[RegisteredImpl, ...] = ()  # highest priority first, ties by name
_WARNED: set = set()  # (requested impl, reason) pairs already warned about


def _add(entry: RegisteredImpl) -> None:
    global _BY_PRIORITY
    _REGISTRY[entry.name] = entry
    _BY_PRIORITY = tuple(sorted(_REGISTRY.values(), key=lambda e: (-e.priority, e.name)))


def register_outlook_impl(name: str, supports: SupportsFn | None = None,
                          priority: int = 0) -> Callable[[OutlookImpl], OutlookImpl]:
    """Decorator registering an implementation (same signature as the reference) as ``name``.

    Args:
        name: what ``impl=`` / $MMVOLO_OUTLOOK_IMPL call it; re-registering replaces the entry.
        supports: ``supports(v, logits) -> None | reason``; None (the default) means it runs
            on any tensors.
        priority: ``'auto'`` takes the highest-priority impl that supports the tensors.
    """

    def _register(fn: OutlookImpl) -> OutlookImpl:
        _add(RegisteredImpl(name, fn, supports, priority))
        return fn

    return _register


def register_unavailable_impl(name: str, reason: str, priority: int = 0) -> None:
    """Register ``name`` as known but unable to run in this process (e.g. missing package)."""
    _add(RegisteredImpl(name, None, None, priority, unavailable=reason))


def unregister_outlook_impl(name: str) -> RegisteredImpl | None:
    """Remove ``name`` from the registry; returns its entry (None if it was not registered)."""
    global _BY_PRIORITY
    entry = _REGISTRY.pop(name, None)
    _BY_PRIORITY = tuple(e for e in _BY_PRIORITY if e.name != name)
    return entry


@contextlib.contextmanager
def temporary_outlook_impl(name: str, fn: OutlookImpl | None = None,
                           supports: SupportsFn | None = None, priority: int = 0,
                           unavailable: str | None = None) -> Iterator[None]:
    """Register ``fn`` (or, with ``fn=None``, an unavailable entry) as ``name`` for a block,
    then restore whatever was registered under ``name`` before (for tests)."""
    previous = _REGISTRY.get(name)
    if fn is None:
        register_unavailable_impl(name, unavailable or 'unavailable', priority)
    else:
        register_outlook_impl(name, supports, priority)(fn)
    try:
        yield
    finally:
        unregister_outlook_impl(name)
        if previous is not None:
            _add(previous)


def available_impls() -> list[str]:
    """Registered impls that can run in this process (their names, sorted)."""
    return sorted(name for name, entry in _REGISTRY.items() if entry.fn is not None)


def known_impls() -> list[str]:
    """Names accepted by ``impl=`` besides ``'auto'``, unavailable ones included (sorted)."""
    return sorted(_REGISTRY)


def unsupported_reason(name: str, v: torch.Tensor, logits: torch.Tensor) -> str | None:
    """None when registered impl ``name`` can run on ``v`` and ``logits``, else why not."""
    return _lookup(name, 'impl=').reason_not_to_run(v, logits)


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


def _lookup(name: str, source: str) -> RegisteredImpl:
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"unknown outlook attention impl '{name}' ({source}); choose one of "
                         f"{', '.join(['auto', *known_impls()])}")
    return entry


def select_impl(v: torch.Tensor, impl: str | None = None,
                logits: torch.Tensor | None = None) -> str:
    """Resolve ``impl`` (argument, else $MMVOLO_OUTLOOK_IMPL, else 'auto') to a runnable name.

    A known impl that cannot run on these tensors resolves to the 'auto' choice, with a
    warning (once per impl and reason); an unknown name raises ValueError.
    """
    source = 'impl=' if impl else IMPL_ENV_VAR
    name = impl or os.environ.get(IMPL_ENV_VAR, 'auto')
    logits = v if logits is None else logits
    if name == 'auto':
        return _auto_impl(v, logits)
    reason = _lookup(name, source).reason_not_to_run(v, logits)
    if reason is None:
        return name
    chosen = _auto_impl(v, logits)
    _warn_fallback(name, source, reason, chosen)
    return chosen


def _auto_impl(v: torch.Tensor, logits: torch.Tensor) -> str:
    """The highest-priority registered impl that can run on ``v`` and ``logits``."""
    passed_over = []
    for entry in _BY_PRIORITY:
        reason = entry.reason_not_to_run(v, logits)
        if reason is None:
            _log_auto_choice(entry.name, tuple(passed_over), v.device.type, v.dtype,
                             logits.dtype)
            return entry.name
        passed_over.append((entry.name, reason))
    raise RuntimeError(f'no registered outlook attention impl can run on these tensors: '
                       f'{passed_over}')


def _constant_at_trace_time(fn: Callable) -> Callable:
    """``torch.compiler.assume_constant_result(fn)``, without importing dynamo at import time.

    That function imports ``torch._dynamo`` (0.4 s, numpy.random with it) only to mark ``fn``
    for dynamo; ``import mmvolo`` should not pay that. With dynamo loaded its own decorator
    marks ``fn``; otherwise the same mark is set here, which dynamo reads when it traces
    (``test_compile_fallback_and_debug_log_without_graph_break`` holds it).
    """
    dynamo = sys.modules.get('torch._dynamo')
    if dynamo is not None:
        return dynamo.assume_constant_result(fn)
    fn._dynamo_marked_constant = True  # what torch._dynamo.assume_constant_result sets
    return fn


@_constant_at_trace_time
def _log_auto_choice(chosen: str, passed_over: tuple, device: str, v_dtype: torch.dtype,
                     logits_dtype: torch.dtype) -> bool:
    """Debug log of 'auto's choice (run by dynamo at trace time, so no graph break)."""
    if logger.isEnabledFor(logging.DEBUG):
        skipped = '; '.join(f"'{name}': {why}" for name, why in passed_over) or 'none'
        logger.debug("outlook attention 'auto' chose '%s' for %s %s/%s tensors (passed over: "
                     '%s)', chosen, device, v_dtype, logits_dtype, skipped)
    return True


@_constant_at_trace_time
def _warn_fallback(requested: str, source: str, reason: str, chosen: str) -> bool:
    """Warn once per (requested, reason) that ``chosen`` runs instead of ``requested``."""
    if (requested, reason) not in _WARNED:
        _WARNED.add((requested, reason))
        warnings.warn(f"outlook attention impl '{requested}' (from {source}) cannot run here: "
                      f"{reason}; running '{chosen}' (the 'auto' choice) instead",
                      OutlookImplFallbackWarning, stacklevel=4)
    return True


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
    name = select_impl(v, impl, logits)
    return _REGISTRY[name].fn(v, logits, num_heads, kernel_size, padding, stride)
