"""How every fast path splits its work into blocks of rows, and the dtype it computes in:
one rule each, shared by outlook attention's ``chunked`` kernel and every fast path of
:func:`~mmvolo.ops.local_aggregate` / :func:`~mmvolo.ops.local_similarity`."""
from __future__ import annotations

import os

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 are computed (accumulated) in fp32 by the fast paths; fp32/fp64 in themselves."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def rows_per_block(rows: int, per_row: int, target_elems: int, min_blocks: int = 1,
                   max_blocks: int | None = None, env_var: str | None = None) -> int:
    """Rows of one block when ``rows`` rows of ``per_row`` elements each are processed in
    blocks of about ``target_elems`` elements.

    The block count ``n = ceil(rows * per_row / target_elems)`` is clamped to
    ``[min_blocks, max_blocks]`` and the rows split evenly: ``ceil(rows / n)``. ``$env_var``
    (elements per block) overrides both the target and the clamp (tests, tuning).
    """
    per_row = max(per_row, 1)
    override = os.environ.get(env_var) if env_var else None
    if override:
        return max(1, min(rows, int(override) // per_row))
    blocks = max(min_blocks, -(-per_row * rows // target_elems))
    if max_blocks is not None:
        blocks = min(blocks, max_blocks)
    return max(1, -(-rows // max(blocks, 1)))


#: Elements of the input per row block of the window fast paths (see :func:`row_blocks`).
BLOCK_ENV_VAR = 'MMVOLO_WINDOW_BLOCK_ELEMS'
DEFAULT_BLOCK_ELEMS = 1 << 21
MAX_BLOCKS = 8


def row_blocks(x: torch.Tensor) -> list[tuple[int, int]]:
    """Split the rows of x (B, H, W, C) into blocks processed one after another.

    The per-tap loops of a fast path make K*K passes over the tensors they touch; doing
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
