"""How every fast path splits its work into blocks of rows, and the dtype it computes in:
one rule each, shared by outlook attention's ``chunked`` impl, the window ops and
:func:`~mmvolo.ops.local_aggregate`."""
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
