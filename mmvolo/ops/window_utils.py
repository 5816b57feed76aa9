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
per-offset scalars the op keeps (K*K per pixel and group/head). The offset loops run per
block of output rows (:func:`row_blocks`), so a block's working set stays in cache.
Neighbours outside the image are zero padding (involution, depthwise conv) or masked out
(local attention).
Windows are centred: stride 1, padding K // 2, K odd, output shape = input shape.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from .tiling import compute_dtype, rows_per_block  # noqa: F401  (compute_dtype: re-exported)

#: Elements of the input per row block of the fast paths (see :func:`row_blocks`).
BLOCK_ENV_VAR = 'MMVOLO_WINDOW_BLOCK_ELEMS'
DEFAULT_BLOCK_ELEMS = 1 << 21
MAX_BLOCKS = 8


def check_kernel_size(op: str, kernel_size: int) -> None:
    """Require an odd window size >= 1 (a centred window keeps the input's shape)."""
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'{op}: kernel_size must be an odd int >= 1 (centred window, '
                         f'padding K//2), got {kernel_size!r}')


def check_tokens(op: str, name: str, x: torch.Tensor) -> None:
    """Require a 4-d channels-last tensor (B, H, W, C)."""
    if x.dim() != 4:
        raise ValueError(f'{op}: {name} must be channels-last (B, H, W, C), got shape '
                         f'{tuple(x.shape)}')


def offset_slices(a: int, b: int, kernel_size: int, height: int, width: int,
                  row_block: tuple[int, int] | None = None
                  ) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Where window offset (a, b) stays inside the image, as two same-sized rectangles.

    Returns ``((rows, cols), (in_rows, in_cols))``: output pixels ``[rows, cols]`` (only rows
    in ``row_block = (start, stop)`` if given) read the input at ``[in_rows, in_cols]``
    (shifted by ``(a - K//2, b - K//2)``); every other output pixel's offset (a, b) falls
    outside the image. None when no pixel's does.
    """
    pad = kernel_size // 2
    dy, dx = a - pad, b - pad
    start, stop = row_block or (0, height)
    r0, r1 = max(start, -dy), min(stop, height - dy)
    c0, c1 = max(0, -dx), min(width, width - dx)
    if r1 <= r0 or c1 <= c0:
        return None
    return (slice(r0, r1), slice(c0, c1)), (slice(r0 + dy, r1 + dy), slice(c0 + dx, c1 + dx))


def window_offsets(kernel_size: int, height: int, width: int,
                   row_block: tuple[int, int] | None = None) -> Iterator[tuple]:
    """(k, a, b, out_slices, in_slices) for every offset k = a*K + b that stays inside the
    image for some pixel (of the output rows ``row_block``; see :func:`offset_slices`)."""
    for a in range(kernel_size):
        for b in range(kernel_size):
            slices = offset_slices(a, b, kernel_size, height, width, row_block)
            if slices is not None:
                yield a * kernel_size + b, a, b, slices[0], slices[1]


def row_blocks(x: torch.Tensor) -> list[tuple[int, int]]:
    """Split the rows of tokens x (B, H, W, C) into blocks processed one after another.

    The per-offset loops of a fast path make K*K passes over the tensors they touch; doing
    them block by block keeps a block's working set in cache, which is ~1.4x faster once the
    tensors outgrow it (local attention on CPU at D1 stage 1, 2x128x256 tokens). Blocks hold
    about :data:`DEFAULT_BLOCK_ELEMS` elements of x, at most :data:`MAX_BLOCKS` of them (each
    block costs K*K ops per loop, whose fixed cost dominates on an oversubscribed CPU);
    $MMVOLO_WINDOW_BLOCK_ELEMS sets the elements per block without that clamp (tests).
    """
    batch, height, width, channels = x.shape
    rows = rows_per_block(height, batch * width * channels, DEFAULT_BLOCK_ELEMS,
                          max_blocks=MAX_BLOCKS, env_var=BLOCK_ENV_VAR)
    return [(start, min(start + rows, height)) for start in range(0, height, rows)]


def dot_last_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                  scratch: torch.Tensor) -> None:
    """``out[...] = (a * b).sum(-1)``, the product written into ``scratch`` (a buffer at least
    as large as ``a`` in every dim, reused across the offsets of one call).

    ``torch.linalg.vecdot`` would allocate that product afresh for every offset; above the
    allocator's mmap threshold (32 MiB in glibc) each such allocation is new pages, and the
    page faults of 2*K*K of them cost more than the arithmetic at D1 stage-1 sizes.
    """
    product = scratch[tuple(slice(0, size) for size in a.shape)]
    torch.mul(a, b, out=product)
    torch.sum(product, dim=-1, out=out)


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

