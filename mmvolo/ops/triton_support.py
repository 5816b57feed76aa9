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


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): Triton block sizes."""
    return 1 << max(0, (n - 1).bit_length())


def launch(kernel: Any, grid: tuple[int, ...], device: Any, op: str, num_warps: int,
           *args: Any, **meta: Any) -> None:
    """Run ``kernel[grid](*args, **meta)`` on ``device``'s CUDA stream, or interpreted (CPU
    tensors are accepted only by interpreted kernels: else a one-line RuntimeError)."""
    if is_interpreted(kernel):
        kernel[grid](*args, **meta)
    elif device.type == 'cuda':
        import torch

        with torch.cuda.device(device):
            kernel[grid](*args, **meta, num_warps=num_warps)
    else:
        raise RuntimeError(f'{op}: tensors on CPU need TRITON_INTERPRET=1 set before triton '
                           'is imported')


def unsupported_reason(first: Any, second: Any, names: tuple[str, str], dtypes: tuple,
                       interpreted: bool) -> str | None:
    """None when a fused kernel can run on the two input tensors, else why not (their
    devices, their dtypes against ``dtypes``, CUDA or the interpreter)."""
    if first.device != second.device:
        return f'{names[0]} and {names[1]} are on different devices'
    if first.dtype not in dtypes or second.dtype not in dtypes:
        taken = ', '.join(str(dtype).replace('torch.', '') for dtype in dtypes)
        return f'dtypes {first.dtype} / {second.dtype} (the kernels take {taken})'
    if not (first.is_cuda or interpreted):
        return (f'{first.device.type} tensors (the kernels run on CUDA, or on CPU with '
                'TRITON_INTERPRET=1 set before triton is imported)')
    return None
