"""Fused Triton outlook attention (forward and backward), registered as ``'triton'``.

Formulation: gather, no atomics. Every kernel owns the tensor it writes and pulls what it
needs, so results are deterministic and need no fp32 scratch buffer for the fold:

* forward, one program per (block of output pixels p, batch*head): for each window offset
  k_o = (ki, kj) the single grid cell n with ``pos(n, k_o) = p`` is found arithmetically
  (``i = (y + P - ki) / S`` when that divides and is in range); the softmax statistics of
  the logits row ``logits[n, head, k_o, :]`` are computed in fp32, then a loop over k_in
  accumulates ``A[n, k_o, k_in] * V[pos(n, k_in)]`` into the pixel. Each (n, k_o) row
  belongs to exactly one pixel, so nothing is computed twice.
* backward 1, one program per (block of grid cells n, batch*head): per k_o it loads
  ``gY = grad_out[pos(n, k_o)]``, builds ``gA[k_in] = gY . V[pos(n, k_in)]`` and writes
  ``glogits = A * (gA - sum(gA * A))``; it also writes the per-row log-sum-exp (fp32, 1/K^2
  the size of the logits) for backward 2.
* backward 2, one program per (block of value pixels q, batch*head): for each k_in finds the
  cell n with ``pos(n, k_in) = q`` and accumulates ``A[n, k_o, k_in] * gY[n, k_o]`` over k_o,
  with A rebuilt from logits and the saved log-sum-exp.

Tiles are 2-D (pixels x head_dim) and the inner loops are not unrolled: compiled ahead of
time for sm_90 (fp32, num_warps=4, head_dim 32) the kernels use 94 / 56 / 116 registers and
no local-memory spills. They have only been run under the interpreter in this repository:
their correctness is tested there, their GPU speed is unmeasured.

All arithmetic is fp32 whatever the input dtype (fp32/fp16/bf16); results are cast to the
input dtypes on store.

The window/grid index arithmetic (which pixel a cell's window offset reads, which cell
covers a pixel at an offset) is in ``@triton.jit`` helpers the three kernels call.

The kernels are launched through two ``torch.library.custom_op`` s (``mmvolo::outlook_fwd``
and ``mmvolo::outlook_bwd``, built by :func:`~mmvolo.ops.custom_op.define_outlook_op`) with
fake (meta) implementations and autograd, so ``torch.compile`` of a model calling
:func:`outlook_attention` with this impl traces the op as one opaque node without a graph
break. Remaining limitations: the op is opaque to inductor (no fusion with neighbours), and
the backward is not itself differentiable (no double backward).

With ``TRITON_INTERPRET=1`` set before triton is first imported, ``triton.jit`` returns
interpreted kernels and :func:`outlook_attention_triton` runs on CPU tensors (slow; for
tests - they run it in a subprocess). Triton 3.8's interpreter cannot be switched on later
in a process: ``tl.max``/``tl.sum`` are themselves jitted at import time. The registered
``'triton'`` impl (priority above ``'chunked'``) supports CUDA tensors in fp32/fp16/bf16, and
CPU tensors in interpreter mode, so ``'auto'`` picks it there; elsewhere ``'auto'`` passes it
over, and an explicit request warns and runs the ``'auto'`` choice. Without a working triton
the name is registered as known but unavailable (same fallback, the import error as reason).
"""
from __future__ import annotations

from typing import Any

import torch

from .custom_op import define_outlook_op
from .outlook import output_grid, register_outlook_impl, register_unavailable_impl
from .triton_support import (
    HAS_TRITON,
    TRITON_MISSING,
    is_interpreted,
    launch,
    next_pow2,
    tl,
    triton,
    unsupported_reason,
)
from .triton_support import jit as _jit

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_PIXELS = 16  # pixels (or grid cells) per program on the GPU
BLOCK_PIXELS_INTERPRETED = 128  # fewer, larger programs: the interpreter pays per program
NUM_WARPS = 4
#: above 'chunked': 'auto' takes it wherever it can run (CUDA; CPU only when interpreted)
PRIORITY = 20


# ----------------------------------------------------------------------------------------
# Kernels (``_jit`` is ``triton.jit`` when triton is importable). The index arithmetic lives
# in the jit helpers below, which each kernel calls.
# ----------------------------------------------------------------------------------------

@_jit
def _program(rows, cols, NUM_HEADS: tl.constexpr, BLOCK: tl.constexpr):
    """This program's block of a (rows, cols) grid, flattened: (flat indices, their mask,
    row and column indices, batch index, head)."""
    pid_bh = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    return (offs, offs < rows * cols, offs // cols, offs % cols,
            (pid_bh // NUM_HEADS).to(tl.int64), pid_bh % NUM_HEADS)


@_jit
def _window_pixel(b, i, j, k, valid, height, width, head, NUM_HEADS: tl.constexpr,
                  HEAD_DIM: tl.constexpr, K: tl.constexpr, PADDING: tl.constexpr,
                  STRIDE: tl.constexpr):
    """pos(n, k) of grid cell n = (i, j) at window offset k, as (offset of its head's channels
    in a (B, H, W, C) tensor, mask: valid and inside the image)."""
    py = i * STRIDE - PADDING + k // K
    px = j * STRIDE - PADDING + k % K
    inside = valid & (py >= 0) & (py < height) & (px >= 0) & (px < width)
    return ((b * height + py) * width + px) * (NUM_HEADS * HEAD_DIM) + head * HEAD_DIM, inside


@_jit
def _covering_cell(y, x, ki, kj, valid, grid_h, grid_w, PADDING: tl.constexpr,
                   STRIDE: tl.constexpr):
    """Grid cell (i, j) whose window offset (ki, kj) lands on pixel (y, x), i.e.
    i*S - P + ki == y (floor-div only on non-negative numbers), and the mask of pixels that
    have one."""
    ty = y + PADDING - ki
    ty_pos = tl.where(ty >= 0, ty, 0)
    i = ty_pos // STRIDE
    tx = x + PADDING - kj
    tx_pos = tl.where(tx >= 0, tx, 0)
    j = tx_pos // STRIDE
    ok = (valid & (ty >= 0) & (ty_pos % STRIDE == 0) & (i < grid_h)
          & (tx >= 0) & (tx_pos % STRIDE == 0) & (j < grid_w))
    return i, j, ok


@_jit
def _load_rows(ptr, offset, ok, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr):
    """(BLOCK, D_PAD) fp32 tile of one head's channels at ``offset`` (zeros where masked)."""
    offs_d = tl.arange(0, D_PAD)
    mask = ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    return tl.load(ptr + offset[:, None] + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)


@_jit
def _store_pixels(ptr, acc, b, offs_p, mask_p, height, width, head, NUM_HEADS: tl.constexpr,
                  HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr):
    """Store the (BLOCK, D_PAD) tile ``acc`` at pixels ``offs_p`` of one head, (B, H, W, C)."""
    offs_d = tl.arange(0, D_PAD)
    offset = (b * height * width + offs_p) * (NUM_HEADS * HEAD_DIM) + head * HEAD_DIM
    tl.store(ptr + offset[:, None] + offs_d[None, :], acc.to(ptr.dtype.element_ty),
             mask=mask_p[:, None] & (offs_d < HEAD_DIM)[None, :])


@_jit
def _fwd_kernel(v_ptr, logits_ptr, out_ptr, height, width, grid_h, grid_w,
                NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                K: tl.constexpr, KK_PAD: tl.constexpr, PADDING: tl.constexpr,
                STRIDE: tl.constexpr, BLOCK: tl.constexpr):
    """out[p] = sum over the K*K cells n covering p of sum_k_in A[n, k_o, k_in] V[pos(n, k_in)]."""
    offs_p, mask_p, y, x, b, head = _program(height, width, NUM_HEADS, BLOCK)
    kk = K * K
    offs_k = tl.arange(0, KK_PAD)
    mask_k = offs_k < kk
    acc = tl.full((BLOCK, D_PAD), 0.0, tl.float32)
    for ki in tl.static_range(K):
        for kj in tl.static_range(K):
            i, j, ok = _covering_cell(y, x, ki, kj, mask_p, grid_h, grid_w, PADDING, STRIDE)
            cell = (b * grid_h + i) * grid_w + j
            row_base = cell * (NUM_HEADS * kk * kk) + (head * kk + ki * K + kj) * kk
            # softmax statistics of row (n, k_o) over k_in
            row = tl.load(logits_ptr + row_base[:, None] + offs_k[None, :],
                          mask=ok[:, None] & mask_k[None, :], other=float('-inf'))
            row = row.to(tl.float32)
            row_max = tl.where(ok, tl.max(row, axis=1), 0.0)
            den = tl.sum(tl.exp(row - row_max[:, None]), axis=1)
            den = tl.where(ok, den, 1.0)
            for k_in in range(kk):
                v_off, ok_v = _window_pixel(b, i, j, k_in, ok, height, width, head, NUM_HEADS,
                                            HEAD_DIM, K, PADDING, STRIDE)
                logit = tl.load(logits_ptr + row_base + k_in, mask=ok, other=float('-inf'))
                attn = tl.exp(logit.to(tl.float32) - row_max) / den
                acc += attn[:, None] * _load_rows(v_ptr, v_off, ok_v, HEAD_DIM, D_PAD)
    _store_pixels(out_ptr, acc, b, offs_p, mask_p, height, width, head, NUM_HEADS, HEAD_DIM,
                  D_PAD)


@_jit
def _bwd_logits_kernel(v_ptr, logits_ptr, gout_ptr, glogits_ptr, lse_ptr, height, width,
                       grid_h, grid_w, NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                       D_PAD: tl.constexpr, K: tl.constexpr, KK_PAD: tl.constexpr,
                       PADDING: tl.constexpr, STRIDE: tl.constexpr, BLOCK: tl.constexpr):
    """glogits[n, k_o, :] = A * (gA - sum(gA * A)), gA[k_in] = grad_out[pos(n,k_o)].V[pos(n,k_in)];
    also writes lse[n, k_o] = logsumexp_k_in logits[n, k_o, k_in] for the values kernel."""
    offs_n, mask_n, i, j, b, head = _program(grid_h, grid_w, NUM_HEADS, BLOCK)
    kk = K * K
    offs_k = tl.arange(0, KK_PAD)
    mask_k = offs_k < kk
    cell = b * grid_h * grid_w + offs_n
    head_base = cell * (NUM_HEADS * kk * kk) + head * kk * kk
    lse_base = (cell * NUM_HEADS + head) * kk
    row_mask = mask_n[:, None] & mask_k[None, :]
    for k_out in range(kk):
        g_off, ok_g = _window_pixel(b, i, j, k_out, mask_n, height, width, head, NUM_HEADS,
                                    HEAD_DIM, K, PADDING, STRIDE)
        gy = _load_rows(gout_ptr, g_off, ok_g, HEAD_DIM, D_PAD)
        grad_attn = tl.full((BLOCK, KK_PAD), 0.0, tl.float32)
        for k_in in range(kk):
            v_off, ok_v = _window_pixel(b, i, j, k_in, mask_n, height, width, head, NUM_HEADS,
                                        HEAD_DIM, K, PADDING, STRIDE)
            dot = tl.sum(gy * _load_rows(v_ptr, v_off, ok_v, HEAD_DIM, D_PAD), axis=1)
            grad_attn = tl.where(offs_k[None, :] == k_in, dot[:, None], grad_attn)
        row_off = head_base + k_out * kk
        row = tl.load(logits_ptr + row_off[:, None] + offs_k[None, :], mask=row_mask,
                      other=float('-inf')).to(tl.float32)
        row_max = tl.where(mask_n, tl.max(row, axis=1), 0.0)
        num = tl.exp(row - row_max[:, None])
        den = tl.where(mask_n, tl.sum(num, axis=1), 1.0)
        attn = num / den[:, None]
        dot_all = tl.sum(grad_attn * attn, axis=1)
        grad_row = attn * (grad_attn - dot_all[:, None])
        tl.store(glogits_ptr + row_off[:, None] + offs_k[None, :],
                 grad_row.to(glogits_ptr.dtype.element_ty), mask=row_mask)
        tl.store(lse_ptr + lse_base + k_out, row_max + tl.log(den), mask=mask_n)


@_jit
def _bwd_values_kernel(logits_ptr, lse_ptr, gout_ptr, gv_ptr, height, width, grid_h, grid_w,
                       NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                       K: tl.constexpr, KK_PAD: tl.constexpr, PADDING: tl.constexpr,
                       STRIDE: tl.constexpr, BLOCK: tl.constexpr):
    """gv[q] = sum over cells n with pos(n, k_in) = q of sum_k_o A[n, k_o, k_in] gY[n, k_o]."""
    offs_p, mask_p, y, x, b, head = _program(height, width, NUM_HEADS, BLOCK)
    kk = K * K
    acc = tl.full((BLOCK, D_PAD), 0.0, tl.float32)
    for ki in tl.static_range(K):
        for kj in tl.static_range(K):
            i, j, ok = _covering_cell(y, x, ki, kj, mask_p, grid_h, grid_w, PADDING, STRIDE)
            cell = (b * grid_h + i) * grid_w + j
            col_base = cell * (NUM_HEADS * kk * kk) + head * kk * kk + ki * K + kj
            lse_base = (cell * NUM_HEADS + head) * kk
            for k_out in range(kk):
                logit = tl.load(logits_ptr + col_base + k_out * kk, mask=ok,
                                other=float('-inf')).to(tl.float32)
                lse = tl.load(lse_ptr + lse_base + k_out, mask=ok, other=0.0)
                attn = tl.exp(logit - lse)
                g_off, ok_g = _window_pixel(b, i, j, k_out, ok, height, width, head, NUM_HEADS,
                                            HEAD_DIM, K, PADDING, STRIDE)
                acc += attn[:, None] * _load_rows(gout_ptr, g_off, ok_g, HEAD_DIM, D_PAD)
    _store_pixels(gv_ptr, acc, b, offs_p, mask_p, height, width, head, NUM_HEADS, HEAD_DIM,
                  D_PAD)


# ----------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------

# True when TRITON_INTERPRET=1 was set before triton was imported: triton.jit then returns
# interpreted kernels, which run on CPU tensors.
INTERPRETED = is_interpreted(_fwd_kernel)


def _block() -> int:
    return BLOCK_PIXELS_INTERPRETED if INTERPRETED else BLOCK_PIXELS


def _meta(v: torch.Tensor, num_heads: int, kernel_size: int, padding: int,
          stride: int) -> dict[str, int]:
    """Compile-time constants shared by the three kernels."""
    head_dim = v.shape[-1] // num_heads
    return dict(NUM_HEADS=num_heads, HEAD_DIM=head_dim, D_PAD=max(2, next_pow2(head_dim)),
                K=kernel_size, KK_PAD=max(2, next_pow2(kernel_size * kernel_size)),
                PADDING=padding, STRIDE=stride, BLOCK=_block())


def _launch(kernel: Any, grid: tuple[int, int], device: torch.device, *args: Any,
            **meta: Any) -> None:
    launch(kernel, grid, device, 'outlook_attention_triton', NUM_WARPS, *args, **meta)


def triton_forward(v: torch.Tensor, logits: torch.Tensor, num_heads: int, kernel_size: int,
                   padding: int, stride: int) -> torch.Tensor:
    """Launch the forward kernel. v (B, H, W, C), logits (B, h, w, heads*K^4) -> (B, H, W, C)."""
    v = v.contiguous()
    logits = logits.contiguous()
    batch, height, width, _ = v.shape
    h, w = output_grid(height, width, stride)
    out = torch.empty_like(v)
    meta = _meta(v, num_heads, kernel_size, padding, stride)
    grid = (triton.cdiv(height * width, _block()), batch * num_heads)
    _launch(_fwd_kernel, grid, v.device, v, logits, out, height, width, h, w, **meta)
    return out


def triton_backward(grad_out: torch.Tensor, v: torch.Tensor, logits: torch.Tensor,
                    num_heads: int, kernel_size: int, padding: int, stride: int,
                    need_v: bool = True,
                    need_logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Launch the backward kernels -> (grad_v (B, H, W, C), grad_logits (B, h, w, heads*K^4)).

    The logits kernel always runs (it also writes the log-sum-exp the values kernel reads);
    the values kernel runs only when ``need_v``. Unneeded gradients come back as None.
    """
    grad_out = grad_out.contiguous()
    v = v.contiguous()
    logits = logits.contiguous()
    batch, height, width, _ = v.shape
    h, w = output_grid(height, width, stride)
    kk = kernel_size * kernel_size
    meta = _meta(v, num_heads, kernel_size, padding, stride)
    grad_logits = torch.empty_like(logits)
    lse = torch.empty(batch, h, w, num_heads * kk, device=v.device, dtype=torch.float32)
    grid_n = (triton.cdiv(h * w, _block()), batch * num_heads)
    _launch(_bwd_logits_kernel, grid_n, v.device, v, logits, grad_out, grad_logits, lse,
            height, width, h, w, **meta)
    grad_v = None
    if need_v:
        grad_v = torch.empty_like(v)
        grid_p = (triton.cdiv(height * width, _block()), batch * num_heads)
        _launch(_bwd_values_kernel, grid_p, v.device, logits, lse, grad_out, grad_v,
                height, width, h, w, **meta)
    return grad_v, (grad_logits if need_logits else None)


def outlook_attention_triton(v: torch.Tensor, logits: torch.Tensor, num_heads: int,
                             kernel_size: int = 3, padding: int = 1,
                             stride: int = 1) -> torch.Tensor:
    """Fused Triton outlook attention (differentiable; CPU tensors run interpreted).

    Args:
        v: values, (B, H, W, C), fp32/fp16/bf16.
        logits: scaled attention logits, (B, ceil(H/S), ceil(W/S), num_heads * K**4).
        num_heads, kernel_size, padding, stride: as in the reference.

    Returns:
        (B, H, W, C) in ``v.dtype``.
    """
    if not HAS_TRITON:
        raise RuntimeError(f'outlook_attention_triton: {TRITON_MISSING}')
    return _triton_op(v, logits, num_heads, kernel_size, padding, stride)


def triton_supports(v: torch.Tensor, logits: torch.Tensor) -> str | None:
    """None when the 'triton' impl can run on these tensors, else why not."""
    return unsupported_reason(v, logits, ('v', 'logits'), SUPPORTED_DTYPES, INTERPRETED)


if HAS_TRITON:
    _triton_op = define_outlook_op('mmvolo::outlook', triton_forward, triton_backward)
    register_outlook_impl('triton', triton_supports, PRIORITY)(outlook_attention_triton)
else:  # pragma: no cover - exercised only without triton
    register_unavailable_impl('triton', TRITON_MISSING, PRIORITY)
