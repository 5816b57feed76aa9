"""Triton, imported once for every fused kernel in :mod:`mmvolo.ops`.

A missing or broken triton never breaks ``import mmvolo``: :data:`triton` and :data:`tl` are
then None, :data:`TRITON_MISSING` says why, and :func:`jit` returns the plain function (the
kernel modules register their impls as known but unavailable, with that reason).
"""
from __future__ import annotations

from typing import Any

try:
    import triton
    import triton.language as tl
    TRITON_MISSING: str | None = None
except Exception as exc:  # pragma: no cover - exercised only without a working triton
    triton = tl = None
    TRITON_MISSING = f'triton is not importable here ({exc})'

HAS_TRITON = TRITON_MISSING is None


def jit(fn: Any) -> Any:
    """``triton.jit(fn)`` when triton is importable, else ``fn`` (never called then)."""
    return triton.jit(fn) if HAS_TRITON else fn


def is_interpreted(kernel: Any) -> bool:
    """True when ``kernel`` runs under Triton's interpreter (``TRITON_INTERPRET=1`` before
    triton was imported): the interpreter's kernels are not ``JITFunction``s."""
    return HAS_TRITON and not isinstance(kernel, triton.runtime.JITFunction)
