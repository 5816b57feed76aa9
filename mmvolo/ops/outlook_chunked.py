"""Memory-light pure-PyTorch outlook attention, registered as ``'chunked'``.

Formulation (channels-last, no ``F.unfold`` / ``F.fold``):

* ``v`` is copied once into a zero-padded buffer ``vp`` of shape (B, Hp, Wp, C) so that every
  window position of every output-grid cell is in range.
* The output grid is processed in chunks of whole rows. For a chunk of ``r`` rows, the K*K
  windows are read with one ``as_strided`` view of ``vp`` (overlapping windows are just
  strides) and copied into a (B*r*w*heads, K*K, d) tensor; ``softmax(logits)`` of the chunk
  is multiplied with it by one ``bmm``.
* The fold is an overlap-add: for each window offset (ki, kj) the chunk's results are added
  into the strided slice ``out[:, ki-P::S, kj-P::S]`` (clipped to the image) of the output
  (an fp32 buffer for fp16/bf16). Chunks that touch the same output rows simply add, so no
  halo handling is needed.

Only one chunk of unfolded values and of ``attn @ v`` exists at any time. The op is a
``torch.library.custom_op`` (``mmvolo::outlook_chunked_fwd``/``_bwd``, built by
:func:`~mmvolo.ops.custom_op.define_outlook_op`) with fake kernels and autograd, so
``torch.compile`` keeps it as one opaque node (no graph break; no fusion into it either).
Its backward saves only ``v`` and ``logits`` and recomputes per chunk (forward and backward
share one chunk loop, ``_ChunkPlan.chunks``):

    gY  = windows(grad_out)                          # (n, K*K, d), gathered like v
    gA  = gY @ Vwin^T ;  glogits = A * (gA - sum_k(gA * A))
    gV  = fold(A^T @ gY)                             # overlap-add like the forward output

Softmax and accumulation run in fp32 for fp16/bf16 inputs (the reference computes them in
the input dtype, so low-precision results differ from it by rounding only); fp32 and fp64
inputs are computed in their own dtype.
"""
from __future__ import annotations

import os
from typing import Iterator, Tuple

import torch

from .custom_op import define_outlook_op
from .outlook_attention import output_grid, register_outlook_impl

CHUNK_ENV_VAR = 'MMVOLO_OUTLOOK_CHUNK_ELEMS'
# Elements of the per-chunk unfolded value tensor (B*r*w*C*K*K); the default is a tuned
# trade-off between per-op overhead and the working set (see docs/performance.md).
DEFAULT_CHUNK_ELEMS = 1 << 20
MIN_CHUNKS, MAX_CHUNKS = 2, 8
#: 'auto' prefers it to the reference (any tensors), and a fused kernel to it.
PRIORITY = 10


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 are computed in fp32; fp32/fp64 in themselves."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _padded_size(size: int, grid: int, kernel_size: int, padding: int, stride: int) -> int:
    """Length of a padded axis covering all windows and the (offset by P) image itself."""
    return max((grid - 1) * stride + kernel_size, padding + size)


def _pad(x: torch.Tensor, hp: int, wp: int, padding: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, H, W, C) -> zero buffer (B, hp, wp, C) in ``dtype`` with x at offset (P, P)."""
    batch, height, width, channels = x.shape
    xp = x.new_zeros(batch, hp, wp, channels, dtype=dtype)
    xp[:, padding:padding + height, padding:padding + width].copy_(x)
    return xp


def _windows(xp: torch.Tensor, row0: int, rows: int, w: int, num_heads: int,
             kernel_size: int, stride: int) -> torch.Tensor:
    """Gather the K*K windows of output rows [row0, row0+rows) -> (B*rows*w*heads, K*K, d)."""
    batch, _, _, channels = xp.shape
    sb, sh, sw, sc = xp.stride()
    head_dim = channels // num_heads
    view = xp.as_strided(
        (batch, rows, w, num_heads, kernel_size, kernel_size, head_dim),
        (sb, stride * sh, stride * sw, head_dim * sc, sh, sw, sc),
        xp.storage_offset() + row0 * stride * sh)
    return view.reshape(-1, kernel_size * kernel_size, head_dim)


def _valid_slice(first: int, count: int, offset: int, padding: int, stride: int,
                 size: int) -> tuple[slice, slice] | None:
    """Grid indices first..first+count-1 whose ``n*S - P + offset`` lands inside [0, size):
    (their slice relative to ``first``, the slice of image positions they land on), or None
    when there are none."""
    lo = max(first, -((offset - padding) // stride))  # ceil((P - offset) / S)
    hi = min(first + count, (size - 1 + padding - offset) // stride + 1)
    if hi <= lo:
        return None
    dst = slice(lo * stride - padding + offset, (hi - 1) * stride - padding + offset + 1,
                stride)
    return slice(lo - first, hi - first), dst


def _overlap_add(dst: torch.Tensor, y: torch.Tensor, row0: int, rows: int, w: int,
                 kernel_size: int, padding: int, stride: int) -> None:
    """Fold: add y (B*rows*w*heads, K*K, d) into dst (B, H, W, C) in place (clipped)."""
    batch, height, width, channels = dst.shape
    head_dim = y.shape[-1]
    y = y.view(batch, rows, w, -1, kernel_size, kernel_size, head_dim)
    heads = y.shape[3]
    for ki in range(kernel_size):
        row_slices = _valid_slice(row0, rows, ki, padding, stride, height)
        if row_slices is None:
            continue
        for kj in range(kernel_size):
            col_slices = _valid_slice(0, w, kj, padding, stride, width)
            if col_slices is None:
                continue
            target = dst[:, row_slices[1], col_slices[1]].unflatten(-1, (heads, head_dim))
            target.add_(y[:, row_slices[0], col_slices[0], :, ki, kj])


def _chunk_rows(batch: int, w: int, channels: int, kernel_size: int, h: int) -> int:
    """Output-grid rows per chunk: ceil(h / n) for n = total / budget clamped to [2, 8] chunks.

    At least two chunks keep the peak below the reference's even for small inputs; at most
    eight bound the number of ops, whose fixed cost dominates when the CPU is oversubscribed
    (every op is a parallel region whose threads wait for each other). Setting
    $MMVOLO_OUTLOOK_CHUNK_ELEMS (elements of one chunk's unfolded values) bypasses the clamp.
    """
    per_row = max(batch * w * channels * kernel_size * kernel_size, 1)
    override = os.environ.get(CHUNK_ENV_VAR)
    if override:
        return max(1, min(h, int(override) // per_row))
    chunks = min(MAX_CHUNKS, max(MIN_CHUNKS, -(-per_row * h // DEFAULT_CHUNK_ELEMS)))
    return -(-h // chunks)


def _attn(logits: torch.Tensor, row0: int, rows: int, kk: int,
          dtype: torch.dtype) -> torch.Tensor:
    """Softmax over k_in of the chunk's logits -> (B*rows*w*heads, K*K, K*K) in ``dtype``."""
    chunk = logits[:, row0:row0 + rows].reshape(-1, kk, kk).to(dtype)
    return _softmax_last(chunk)


def _softmax_last(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last dim (K*K = 9) from elementwise ops and small reductions.

    ``Tensor.softmax`` on CPU is ~20x slower than this when the softmax dim is this short
    (measured: 38 ms vs 1.6 ms for 98k x 9 x 9 fp32 on one core), as it vectorizes along it.
    """
    e = (x - x.amax(dim=-1, keepdim=True)).exp_()
    return e.div_(e.sum(dim=-1, keepdim=True))


class _ChunkPlan:
    """Geometry of one call, shared by forward and backward: the padded buffers' size, the
    compute dtype and the split of the output grid into chunks of whole rows."""

    def __init__(self, v: torch.Tensor, num_heads: int, kernel_size: int, padding: int,
                 stride: int) -> None:
        self.batch, height, width, channels = v.shape
        self.h, self.w = output_grid(height, width, stride)
        self.hp = _padded_size(height, self.h, kernel_size, padding, stride)
        self.wp = _padded_size(width, self.w, kernel_size, padding, stride)
        self.dtype = _compute_dtype(v.dtype)
        self.num_heads, self.kernel_size = num_heads, kernel_size
        self.padding, self.stride = padding, stride
        self.step = _chunk_rows(self.batch, self.w, channels, kernel_size, self.h)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, C) in a zero buffer covering every window, in the compute dtype."""
        return _pad(x, self.hp, self.wp, self.padding, self.dtype)

    def chunks(self, logits: torch.Tensor) -> Iterator[Tuple[range, torch.Tensor]]:
        """Yield (grid rows of the chunk, softmax of its logits (n, K*K, K*K))."""
        kk = self.kernel_size * self.kernel_size
        for row0 in range(0, self.h, self.step):
            rows = range(row0, min(row0 + self.step, self.h))
            yield rows, _attn(logits, row0, len(rows), kk, self.dtype)

    def windows(self, xp: torch.Tensor, rows: range) -> torch.Tensor:
        """The K*K windows of padded ``xp`` for grid ``rows`` -> (n, K*K, d)."""
        return _windows(xp, rows.start, len(rows), self.w, self.num_heads, self.kernel_size,
                        self.stride)

    def overlap_add(self, dst: torch.Tensor, y: torch.Tensor, rows: range) -> None:
        """Fold the chunk's ``y`` (n, K*K, d) into ``dst`` (B, H, W, C) in place."""
        _overlap_add(dst, y, rows.start, len(rows), self.w, self.kernel_size, self.padding,
                     self.stride)


def chunked_forward(v: torch.Tensor, logits: torch.Tensor, num_heads: int, kernel_size: int,
                    padding: int, stride: int) -> torch.Tensor:
    """Forward without autograd bookkeeping; shapes as in :func:`outlook_attention_chunked`."""
    plan = _ChunkPlan(v, num_heads, kernel_size, padding, stride)
    vp = plan.pad(v)
    out = vp.new_zeros(v.shape)
    for rows, attn in plan.chunks(logits):
        plan.overlap_add(out, torch.bmm(attn, plan.windows(vp, rows)), rows)
    return out.to(v.dtype)


def chunked_backward(grad_out: torch.Tensor, v: torch.Tensor, logits: torch.Tensor,
                     num_heads: int, kernel_size: int, padding: int, stride: int,
                     need_v: bool = True,
                     need_logits: bool = True) -> Tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients (grad_v (B, H, W, C), grad_logits (B, h, w, heads*K^4)), recomputed per chunk."""
    plan = _ChunkPlan(v, num_heads, kernel_size, padding, stride)
    vp = plan.pad(v)
    gp = plan.pad(grad_out)
    grad_v = vp.new_zeros(v.shape) if need_v else None
    grad_logits = logits.new_empty(logits.shape) if need_logits else None
    for rows, attn in plan.chunks(logits):
        gy = plan.windows(gp, rows)
        if need_logits:
            ga = torch.bmm(gy, plan.windows(vp, rows).transpose(1, 2))
            gl = attn * (ga - (ga * attn).sum(dim=-1, keepdim=True))
            grad_logits[:, rows.start:rows.stop] = gl.view(plan.batch, len(rows), plan.w, -1)
        if need_v:
            plan.overlap_add(grad_v, torch.bmm(attn.transpose(1, 2), gy), rows)
    return (None if grad_v is None else grad_v.to(v.dtype)), grad_logits


_chunked_op = define_outlook_op('mmvolo::outlook_chunked', chunked_forward, chunked_backward)


@register_outlook_impl('chunked', priority=PRIORITY)
def outlook_attention_chunked(v: torch.Tensor, logits: torch.Tensor, num_heads: int,
                              kernel_size: int = 3, padding: int = 1,
                              stride: int = 1) -> torch.Tensor:
    """Row-chunked outlook attention with per-chunk recompute in backward.

    Args:
        v: values, (B, H, W, C).
        logits: scaled attention logits, (B, ceil(H/S), ceil(W/S), num_heads * K**4).
        num_heads, kernel_size, padding, stride: as in the reference.

    Returns:
        (B, H, W, C) in ``v.dtype``.
    """
    return _chunked_op(v, logits, num_heads, kernel_size, padding, stride)


__all__ = ['outlook_attention_chunked', 'chunked_forward', 'chunked_backward',
           'CHUNK_ENV_VAR', 'DEFAULT_CHUNK_ELEMS']
