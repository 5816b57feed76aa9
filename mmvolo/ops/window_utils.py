"""Helpers shared by the sliding-window token-mixer ops (:mod:`.involution`,
:mod:`.local_attention`, :mod:`.dwconv`).

Each of those ops is one public function with ``impl='auto'|'reference'|'fast'``: the
reference is the paper's formula with the KxK neighbourhood materialised by ``F.unfold``
(O(K*K*C*H*W) memory); the fast path never materialises it. It loops over the K*K window
offsets ``(a, b)``; for each, the output pixels whose offset-(a, b) neighbour lies inside the
image form one rectangle, and the neighbours another, same-sized one shifted by
``(a - K//2, b - K//2)`` (:func:`offset_slices`). Both are plain slices (views) of the
channels-last tensors, so the per-offset work is in-place ``addcmul_`` into the output on
those rectangles - no padding copy, no unfold - and the working set is O(C*H*W) plus the
per-offset scalars the op keeps (K*K per pixel and group/head). Neighbours outside the image
are zero padding (involution, depthwise conv) or masked out (local attention).
Windows are centred: stride 1, padding K // 2, K odd, output shape = input shape.
"""
from __future__ import annotations

from typing import Iterator, Tuple

import torch

#: ``impl=`` values every window op accepts ('auto' is 'fast').
WINDOW_IMPLS = ('auto', 'reference', 'fast')


def resolve_impl(op: str, impl: str | None) -> str:
    """'reference' or 'fast' for ``impl`` (None and 'auto' mean 'fast'); one-line ValueError
    for anything else."""
    if impl is None or impl == 'auto':
        return 'fast'
    if impl not in WINDOW_IMPLS:
        raise ValueError(f"{op}: unknown impl {impl!r}; use one of {', '.join(WINDOW_IMPLS)}")
    return impl


def check_kernel_size(op: str, kernel_size: int) -> None:
    """Require an odd window size >= 1 (a centred window keeps the input's shape)."""
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'{op}: kernel_size must be an odd int >= 1 (centred window, '
                         f'padding K//2), got {kernel_size!r}')


def check_stride(op: str, stride: int) -> None:
    """Token mixers return the input's shape, so only stride 1 is supported."""
    if stride != 1:
        raise ValueError(f'{op}: only stride=1 is supported (a token mixer returns the input '
                         f'shape), got stride={stride!r}')


def check_tokens(op: str, name: str, x: torch.Tensor) -> None:
    """Require a 4-d channels-last tensor (B, H, W, C)."""
    if x.dim() != 4:
        raise ValueError(f'{op}: {name} must be channels-last (B, H, W, C), got shape '
                         f'{tuple(x.shape)}')


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 are computed in fp32 by the fast paths; fp32/fp64 in themselves."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def offset_slices(a: int, b: int, kernel_size: int, height: int,
                  width: int) -> Tuple[Tuple[slice, slice], Tuple[slice, slice]] | None:
    """Where window offset (a, b) stays inside the image, as two same-sized rectangles.

    Returns ``((rows, cols), (in_rows, in_cols))``: output pixels ``[rows, cols]`` read the
    input at ``[in_rows, in_cols]`` (shifted by ``(a - K//2, b - K//2)``); every other output
    pixel's offset (a, b) falls outside the image. None when no pixel's does.
    """
    pad = kernel_size // 2
    dy, dx = a - pad, b - pad
    r0, r1 = max(0, -dy), min(height, height - dy)
    c0, c1 = max(0, -dx), min(width, width - dx)
    if r1 <= r0 or c1 <= c0:
        return None
    return (slice(r0, r1), slice(c0, c1)), (slice(r0 + dy, r1 + dy), slice(c0 + dx, c1 + dx))


def window_offsets(kernel_size: int, height: int, width: int) -> Iterator[tuple]:
    """(k, a, b, out_slices, in_slices) for every offset k = a*K + b that stays inside the
    image for some pixel (see :func:`offset_slices`)."""
    for a in range(kernel_size):
        for b in range(kernel_size):
            slices = offset_slices(a, b, kernel_size, height, width)
            if slices is not None:
                yield a * kernel_size + b, a, b, slices[0], slices[1]


def window_mask(height: int, width: int, kernel_size: int,
                device: torch.device | None = None) -> torch.Tensor:
    """Bool (H, W, K*K): True where window offset k of pixel (i, j) lies inside the image."""
    pad = kernel_size // 2
    rows = torch.arange(height, device=device)[:, None] + torch.arange(kernel_size,
                                                                       device=device) - pad
    cols = torch.arange(width, device=device)[:, None] + torch.arange(kernel_size,
                                                                      device=device) - pad
    row_ok = (rows >= 0) & (rows < height)  # (H, K)
    col_ok = (cols >= 0) & (cols < width)  # (W, K)
    return (row_ok[:, None, :, None] & col_ok[None, :, None, :]).reshape(
        height, width, kernel_size * kernel_size)


def softmax_last(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last dim (K*K) from elementwise ops and small reductions
    (``Tensor.softmax`` vectorises along the last dim on CPU and is much slower there;
    see :func:`mmvolo.ops.outlook_chunked._softmax_last`). Fully masked rows cannot occur:
    the window centre is always inside the image."""
    e = (x - x.amax(dim=-1, keepdim=True)).exp_()
    return e.div_(e.sum(dim=-1, keepdim=True))
