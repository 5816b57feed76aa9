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
``torch.library.custom_op`` (``mmvolo::outlook_chunked_fwd``/``_bwd``) with fake kernels and
``register_autograd``, so ``torch.compile`` keeps it as one opaque node (no graph break; no
fusion into it either). Its backward saves only ``v`` and ``logits`` and recomputes per chunk:

    gY  = windows(grad_out)                          # (n, K*K, d), gathered like v
    gA  = gY @ Vwin^T ;  glogits = A * (gA - sum_k(gA * A))
    gV  = fold(A^T @ gY)                             # overlap-add like the forward output

Softmax and accumulation run in fp32 for fp16/bf16 inputs (the reference computes them in
the input dtype, so low-precision results differ from it by rounding only); fp32 and fp64
inputs are computed in their own dtype.
"""
from __future__ import annotations

import os
from typing import Any, Tuple

import torch

from .outlook_attention import output_grid, register_outlook_impl

CHUNK_ENV_VAR = 'MMVOLO_OUTLOOK_CHUNK_ELEMS'
# Elements of the per-chunk unfolded value tensor (B*r*w*C*K*K); the default is a tuned
# trade-off between per-op overhead and the working set (see docs/performance.md).
DEFAULT_CHUNK_ELEMS = 1 << 20
MIN_CHUNKS, MAX_CHUNKS = 2, 8


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


def _valid_range(first: int, count: int, offset: int, padding: int, stride: int,
                 size: int) -> tuple[int, int]:
    """Sub-range [lo, hi) of grid indices first..first+count-1 whose ``n*S - P + offset``
    lands inside [0, size)."""
    lo = max(first, -((offset - padding) // stride))  # ceil((P - offset) / S)
    hi = min(first + count, (size - 1 + padding - offset) // stride + 1)
    return lo, max(lo, hi)


def _overlap_add(dst: torch.Tensor, y: torch.Tensor, row0: int, rows: int, w: int,
                 kernel_size: int, padding: int, stride: int) -> None:
    """Fold: add y (B*rows*w*heads, K*K, d) into dst (B, H, W, C) in place (clipped)."""
    batch, height, width, channels = dst.shape
    head_dim = y.shape[-1]
    y = y.view(batch, rows, w, -1, kernel_size, kernel_size, head_dim)
    heads = y.shape[3]
    for ki in range(kernel_size):
        i_lo, i_hi = _valid_range(row0, rows, ki, padding, stride, height)
        if i_lo == i_hi:
            continue
        dst_rows = slice(i_lo * stride - padding + ki, (i_hi - 1) * stride - padding + ki + 1,
                         stride)
        for kj in range(kernel_size):
            j_lo, j_hi = _valid_range(0, w, kj, padding, stride, width)
            if j_lo == j_hi:
                continue
            dst_cols = slice(j_lo * stride - padding + kj,
                             (j_hi - 1) * stride - padding + kj + 1, stride)
            target = dst[:, dst_rows, dst_cols].unflatten(-1, (heads, head_dim))
            target.add_(y[:, i_lo - row0:i_hi - row0, j_lo:j_hi, :, ki, kj])


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


def chunked_forward(v: torch.Tensor, logits: torch.Tensor, num_heads: int, kernel_size: int,
                    padding: int, stride: int) -> torch.Tensor:
    """Forward without autograd bookkeeping; shapes as in :func:`outlook_attention_chunked`."""
    batch, height, width, channels = v.shape
    h, w = output_grid(height, width, stride)
    hp = _padded_size(height, h, kernel_size, padding, stride)
    wp = _padded_size(width, w, kernel_size, padding, stride)
    dtype = _compute_dtype(v.dtype)
    kk = kernel_size * kernel_size
    vp = _pad(v, hp, wp, padding, dtype)
    out = vp.new_zeros(v.shape)
    step = _chunk_rows(batch, w, channels, kernel_size, h)
    for row0 in range(0, h, step):
        rows = min(step, h - row0)
        vwin = _windows(vp, row0, rows, w, num_heads, kernel_size, stride)
        y = torch.bmm(_attn(logits, row0, rows, kk, dtype), vwin)
        _overlap_add(out, y, row0, rows, w, kernel_size, padding, stride)
    return out.to(v.dtype)


def chunked_backward(grad_out: torch.Tensor, v: torch.Tensor, logits: torch.Tensor,
                     num_heads: int, kernel_size: int, padding: int, stride: int,
                     need_v: bool = True,
                     need_logits: bool = True) -> Tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients (grad_v (B, H, W, C), grad_logits (B, h, w, heads*K^4)), recomputed per chunk."""
    batch, height, width, channels = v.shape
    h, w = output_grid(height, width, stride)
    hp = _padded_size(height, h, kernel_size, padding, stride)
    wp = _padded_size(width, w, kernel_size, padding, stride)
    dtype = _compute_dtype(v.dtype)
    kk = kernel_size * kernel_size
    vp = _pad(v, hp, wp, padding, dtype)
    gp = _pad(grad_out, hp, wp, padding, dtype)
    grad_v = vp.new_zeros(v.shape) if need_v else None
    grad_logits = logits.new_empty(logits.shape) if need_logits else None
    step = _chunk_rows(batch, w, channels, kernel_size, h)
    for row0 in range(0, h, step):
        rows = min(step, h - row0)
        attn = _attn(logits, row0, rows, kk, dtype)
        gy = _windows(gp, row0, rows, w, num_heads, kernel_size, stride)
        if need_logits:
            vwin = _windows(vp, row0, rows, w, num_heads, kernel_size, stride)
            ga = torch.bmm(gy, vwin.transpose(1, 2))
            gl = attn * (ga - (ga * attn).sum(dim=-1, keepdim=True))
            grad_logits[:, row0:row0 + rows] = gl.view(batch, rows, w, -1)
        if need_v:
            gvwin = torch.bmm(attn.transpose(1, 2), gy)
            _overlap_add(grad_v, gvwin, row0, rows, w, kernel_size, padding, stride)
    return (None if grad_v is None else grad_v.to(v.dtype)), grad_logits


@torch.library.custom_op('mmvolo::outlook_chunked_fwd', mutates_args=())
def _chunked_fwd_op(v: torch.Tensor, logits: torch.Tensor, num_heads: int, kernel_size: int,
                    padding: int, stride: int) -> torch.Tensor:
    return chunked_forward(v, logits, num_heads, kernel_size, padding, stride)


@_chunked_fwd_op.register_fake
def _(v, logits, num_heads, kernel_size, padding, stride):
    return torch.empty_like(v, memory_format=torch.contiguous_format)


@torch.library.custom_op('mmvolo::outlook_chunked_bwd', mutates_args=())
def _chunked_bwd_op(grad_out: torch.Tensor, v: torch.Tensor, logits: torch.Tensor,
                    num_heads: int, kernel_size: int, padding: int, stride: int,
                    need_v: bool, need_logits: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    grad_v, grad_logits = chunked_backward(grad_out, v, logits, num_heads, kernel_size,
                                           padding, stride, need_v, need_logits)
    empty = v.new_empty(0)  # custom ops cannot return None for an unneeded gradient
    return (empty if grad_v is None else grad_v,
            empty if grad_logits is None else grad_logits)


@_chunked_bwd_op.register_fake
def _(grad_out, v, logits, num_heads, kernel_size, padding, stride, need_v, need_logits):
    return (torch.empty_like(v, memory_format=torch.contiguous_format) if need_v
            else v.new_empty(0),
            torch.empty_like(logits, memory_format=torch.contiguous_format) if need_logits
            else v.new_empty(0))


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    v, logits, *params = inputs
    ctx.save_for_backward(v, logits)
    ctx.params = tuple(params)


def _backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
    """Recompute per chunk from the saved (v, logits); not itself differentiable."""
    v, logits = ctx.saved_tensors
    need_v, need_logits = ctx.needs_input_grad[:2]
    grad_v, grad_logits = _chunked_bwd_op(grad_out, v, logits, *ctx.params,
                                          bool(need_v), bool(need_logits))
    return (grad_v if need_v else None, grad_logits if need_logits else None,
            None, None, None, None)


_chunked_fwd_op.register_autograd(_backward, setup_context=_setup_context)


@register_outlook_impl('chunked')
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
    return _chunked_fwd_op(v, logits, num_heads, kernel_size, padding, stride)


__all__ = ['outlook_attention_chunked', 'chunked_forward', 'chunked_backward',
           'CHUNK_ENV_VAR', 'DEFAULT_CHUNK_ELEMS']
