"""One dispatcher for every op in :mod:`mmvolo.ops`: a registry of implementations per op.

Each op (outlook attention, involution, local attention, depthwise conv, local aggregation,
...) owns one :class:`ImplRegistry`. An implementation registers with a name, a priority and
``supports(*tensors) -> None | reason`` (plain Python on tensor attributes such as device and
dtype, so ``torch.compile`` resolves the choice while tracing). Which one runs, for the
tensors at hand:

1. a forced impl (:func:`forced_impl`, a context manager: e.g. the ONNX export forces
   ``'reference'`` on every op for the duration of the export);
2. else the call's ``impl=`` argument (a module's configured impl);
3. else the op's environment variable (``MMVOLO_<OP>_IMPL``, e.g. $MMVOLO_OUTLOOK_IMPL);
4. else ``'auto'``: the highest-priority impl whose ``supports`` accepts the tensors (every
   op registers a ``'reference'`` that supports everything, the last resort). The choice is
   logged at debug level on ``mmvolo.ops``.

A named impl that cannot run on these tensors (unavailable here, or ``supports`` says no)
falls back to the ``'auto'`` choice with one :class:`ImplFallbackWarning` per (op, impl,
reason) saying why and what runs instead; an unknown name is a one-line ValueError listing
the names the op knows. Warning and logging run in functions dynamo treats as constants
(:func:`constant_at_trace_time`), so they cost no graph break.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, Optional

import torch

logger = logging.getLogger('mmvolo.ops')

#: ``supports(*tensors)``: None when the impl can run on these tensors, else a short reason.
SupportsFn = Callable[..., Optional[str]]
#: ``impl=`` values every op accepts besides its registered names.
AUTO = 'auto'


class ImplFallbackWarning(UserWarning):
    """An explicitly requested implementation cannot run here; another one runs instead."""


@dataclass(frozen=True)
class RegisteredImpl:
    """One registry entry; ``fn`` is None for a known impl that is unavailable here."""

    name: str
    fn: Callable | None
    supports: SupportsFn | None
    priority: int
    unavailable: str | None = None  # why ``fn`` is None

    def reason_not_to_run(self, *tensors: torch.Tensor) -> str | None:
        """None when this impl can run on ``tensors``, else why not."""
        if self.fn is None:
            return self.unavailable
        return None if self.supports is None else self.supports(*tensors)


#: {op name: impl name} forced by :func:`forced_impl` (``'*'``: every op).
_FORCED: dict[str, str] = {}
#: Every registry, by op name (for :func:`forced_impl`'s check of the name).
REGISTRIES: dict[str, ImplRegistry] = {}


def env_var_for(op: str) -> str:
    """The environment variable that picks ``op``'s impl: ``MMVOLO_<OP>_IMPL``."""
    return f"MMVOLO_{op.upper().replace(' ', '_')}_IMPL"


class ImplRegistry:
    """The implementations of one op and the rule choosing among them.

    Args:
        op: the op's name in messages, e.g. ``'outlook attention'``.
        env_var: the variable naming an impl for every call without ``impl=``. Default:
            :func:`env_var_for` ``(op)``.
    """

    def __init__(self, op: str, env_var: str | None = None) -> None:
        self.op = op
        self.env_var = env_var or env_var_for(op)
        self._entries: dict[str, RegisteredImpl] = {}
        self._by_priority: tuple[RegisteredImpl, ...] = ()  # highest first, ties by name
        self.warned: set[tuple[str, str]] = set()  # (requested impl, reason) pairs warned
        REGISTRIES[op] = self

    # -- registration ----------------------------------------------------------------------
    def add(self, entry: RegisteredImpl) -> None:
        self._entries[entry.name] = entry
        self._by_priority = tuple(sorted(self._entries.values(),
                                         key=lambda e: (-e.priority, e.name)))

    def register(self, name: str, supports: SupportsFn | None = None,
                 priority: int = 0) -> Callable[[Callable], Callable]:
        """Decorator registering ``fn`` as ``name`` (re-registering replaces the entry)."""

        def _register(fn: Callable) -> Callable:
            self.add(RegisteredImpl(name, fn, supports, priority))
            return fn

        return _register

    def register_unavailable(self, name: str, reason: str, priority: int = 0) -> None:
        """Register ``name`` as known but unable to run here (e.g. a missing package)."""
        self.add(RegisteredImpl(name, None, None, priority, unavailable=reason))

    def unregister(self, name: str) -> RegisteredImpl | None:
        """Remove ``name``; returns its entry (None if it was not registered)."""
        entry = self._entries.pop(name, None)
        self._by_priority = tuple(e for e in self._by_priority if e.name != name)
        return entry

    @contextlib.contextmanager
    def temporary(self, name: str, fn: Callable | None = None,
                  supports: SupportsFn | None = None, priority: int = 0,
                  unavailable: str | None = None) -> Iterator[None]:
        """Register ``fn`` (or, with ``fn=None``, an unavailable entry) as ``name`` for a
        block, then restore what was registered under ``name`` before (for tests)."""
        previous = self._entries.get(name)
        if fn is None:
            self.register_unavailable(name, unavailable or 'unavailable', priority)
        else:
            self.register(name, supports, priority)(fn)
        try:
            yield
        finally:
            self.unregister(name)
            if previous is not None:
                self.add(previous)

    # -- queries ---------------------------------------------------------------------------
    def available(self) -> list[str]:
        """Registered impls that can run in this process (sorted)."""
        return sorted(name for name, entry in self._entries.items() if entry.fn is not None)

    def known(self) -> list[str]:
        """Names ``impl=`` accepts besides 'auto', unavailable ones included (sorted)."""
        return sorted(self._entries)

    def entry(self, name: str, source: str = 'impl=') -> RegisteredImpl:
        """The entry of ``name``; one-line ValueError naming the choices if unknown."""
        found = self._entries.get(name)
        if found is None:
            raise ValueError(f"{self.op}: unknown impl '{name}' ({source}); choose one of "
                             f"{', '.join([AUTO, *self.known()])}")
        return found

    def check_name(self, impl: str | None, source: str = 'impl=') -> None:
        """Raise the unknown-name ValueError now (for constructors), None and 'auto' pass."""
        if impl is not None and impl != AUTO:
            self.entry(impl, source)

    def unsupported_reason(self, name: str, *tensors: torch.Tensor) -> str | None:
        """None when ``name`` can run on ``tensors``, else why not."""
        return self.entry(name).reason_not_to_run(*tensors)

    # -- choosing --------------------------------------------------------------------------
    def select(self, *tensors: torch.Tensor, impl: str | None = None) -> str:
        """The impl that runs on ``tensors``: forced, else ``impl``, else the env var, else
        'auto'; a known impl that cannot run resolves to 'auto' with a warning."""
        forced = _FORCED.get(self.op) or _FORCED.get('*')
        if forced is not None and forced in self._entries:
            name, source = forced, 'forced_impl'
        elif impl:
            name, source = impl, 'impl='
        else:
            name, source = os.environ.get(self.env_var, AUTO), self.env_var
        if name == AUTO:
            return self._auto(tensors)
        reason = self.entry(name, source).reason_not_to_run(*tensors)
        if reason is None:
            return name
        chosen = self._auto(tensors)
        _warn_fallback(self.op, name, source, reason, chosen)
        return chosen

    def run(self, name: str) -> Callable:
        """The function registered as ``name`` (a name :meth:`select` returned)."""
        return self._entries[name].fn

    def _auto(self, tensors: tuple[torch.Tensor, ...]) -> str:
        passed_over = []
        for entry in self._by_priority:
            reason = entry.reason_not_to_run(*tensors)
            if reason is None:
                _log_auto_choice(self.op, entry.name, tuple(passed_over),
                                 tensors[0].device.type, tensors[0].dtype)
                return entry.name
            passed_over.append((entry.name, reason))
        raise RuntimeError(f'no registered {self.op} impl can run on these tensors: '
                           f'{passed_over}')


@contextlib.contextmanager
def forced_impl(name: str, ops: tuple[str, ...] | None = None) -> Iterator[None]:
    """Run impl ``name`` for every op that has it (or only for ``ops``) inside the block,
    whatever the calls' ``impl=`` or the environment say; restored afterwards.

    Process-wide (not per thread): the state is a module dict that ``torch.compile`` reads
    while tracing, like the environment. An op without an impl of that name keeps its own
    choice.

    Raises:
        ValueError: no op (of ``ops``) has an available impl called ``name``.
    """
    targets = ops if ops is not None else tuple(REGISTRIES)
    unknown = [op for op in targets if op not in REGISTRIES]
    if unknown:
        raise ValueError(f"forced_impl: unknown op {unknown[0]!r}; ops: "
                         f"{', '.join(sorted(REGISTRIES))}")
    if not any(name in REGISTRIES[op].available() for op in targets):
        choices = sorted({impl for op in targets for impl in REGISTRIES[op].available()})
        raise ValueError(f"impl '{name}' is not available here; choose one of "
                         f"{', '.join(choices)}")
    keys = targets if ops is not None else ('*',)
    saved = {key: _FORCED.get(key) for key in keys}
    try:
        for key in keys:
            _FORCED[key] = name
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                _FORCED.pop(key, None)
            else:
                _FORCED[key] = value


def constant_at_trace_time(fn: Callable) -> Callable:
    """``torch.compiler.assume_constant_result(fn)``, without importing dynamo at import time.

    That function imports ``torch._dynamo`` (0.4 s, numpy.random with it) only to mark ``fn``
    for dynamo; ``import mmvolo`` should not pay that. With dynamo loaded its own decorator
    marks ``fn``; otherwise the same mark is set here, which dynamo reads when it traces.
    """
    dynamo = sys.modules.get('torch._dynamo')
    if dynamo is not None:
        return dynamo.assume_constant_result(fn)
    fn._dynamo_marked_constant = True  # what torch._dynamo.assume_constant_result sets
    return fn


@constant_at_trace_time
def _log_auto_choice(op: str, chosen: str, passed_over: tuple, device: str,
                     dtype: torch.dtype) -> bool:
    """Debug log of 'auto's choice (run by dynamo at trace time, so no graph break)."""
    if logger.isEnabledFor(logging.DEBUG):
        skipped = '; '.join(f"'{name}': {why}" for name, why in passed_over) or 'none'
        logger.debug("%s 'auto' chose '%s' for %s %s tensors (passed over: %s)", op, chosen,
                     device, dtype, skipped)
    return True


@constant_at_trace_time
def _warn_fallback(op: str, requested: str, source: str, reason: str, chosen: str) -> bool:
    """Warn once per (op, requested, reason) that ``chosen`` runs instead of ``requested``."""
    registry = REGISTRIES[op]
    if (requested, reason) not in registry.warned:
        registry.warned.add((requested, reason))
        warnings.warn(f"{op} impl '{requested}' (from {source}) cannot run here: {reason}; "
                      f"running '{chosen}' (the 'auto' choice) instead",
                      ImplFallbackWarning, stacklevel=4)  # the op's caller
    return True
