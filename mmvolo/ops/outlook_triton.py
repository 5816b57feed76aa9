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

The kernels are launched through two ``torch.library.custom_op`` s (``mmvolo::outlook_fwd``
and ``mmvolo::outlook_bwd``) with fake (meta) implementations and ``register_autograd``, so
``torch.compile`` of a model calling :func:`outlook_attention` with this impl traces the op
as one opaque node without a graph break. Remaining limitations: the op is opaque to
inductor (no fusion with neighbours), and the backward is not itself differentiable
(no double backward).

With ``TRITON_INTERPRET=1`` set before triton is first imported, ``triton.jit`` returns
interpreted kernels and :func:`outlook_attention_triton` runs on CPU tensors (slow; for
tests - they run it in a subprocess). Triton 3.8's interpreter cannot be switched on later
in a process: ``tl.max``/``tl.sum`` are themselves jitted at import time. The registered
``'triton'`` impl claims CUDA tensors (and CPU tensors in interpreter mode); otherwise the
dispatcher falls back to another impl.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

from .outlook_attention import output_grid, register_outlook_impl

try:
    import triton
    import triton.language as tl
    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None
    tl = None
    HAS_TRITON = False

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_PIXELS = 16  # pixels (or grid cells) per program on the GPU
BLOCK_PIXELS_INTERPRETED = 128  # fewer, larger programs: the interpreter pays per program
NUM_WARPS = 4


# ----------------------------------------------------------------------------------------
# Kernels: plain functions, wrapped with ``triton.jit`` below only when triton is importable.
# ----------------------------------------------------------------------------------------

def _fwd_kernel(v_ptr, logits_ptr, out_ptr, height, width, grid_h, grid_w,
                NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                K: tl.constexpr, KK_PAD: tl.constexpr, PADDING: tl.constexpr,
                STRIDE: tl.constexpr, BLOCK: tl.constexpr):
    """out[p] = sum over the K*K cells n covering p of sum_k_in A[n, k_o, k_in] V[pos(n, k_in)]."""
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // NUM_HEADS).to(tl.int64)
    head = pid_bh % NUM_HEADS
    channels = NUM_HEADS * HEAD_DIM
    kk = K * K
    offs_p = pid_p * BLOCK + tl.arange(0, BLOCK)
    mask_p = offs_p < height * width
    y = offs_p // width
    x = offs_p % width
    offs_d = tl.arange(0, D_PAD)
    mask_d = offs_d < HEAD_DIM
    offs_k = tl.arange(0, KK_PAD)
    mask_k = offs_k < kk
    acc = tl.full((BLOCK, D_PAD), 0.0, tl.float32)
    for ki in tl.static_range(K):
        # grid row i with i*S - P + ki == y (floor-div only on non-negative numbers)
        ty = y + PADDING - ki
        ty_pos = tl.where(ty >= 0, ty, 0)
        i = ty_pos // STRIDE
        ok_i = (ty >= 0) & (ty_pos % STRIDE == 0) & (i < grid_h)
        for kj in tl.static_range(K):
            tx = x + PADDING - kj
            tx_pos = tl.where(tx >= 0, tx, 0)
            j = tx_pos // STRIDE
            ok = mask_p & ok_i & (tx >= 0) & (tx_pos % STRIDE == 0) & (j < grid_w)
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
                vy = i * STRIDE - PADDING + k_in // K
                vx = j * STRIDE - PADDING + k_in % K
                ok_v = ok & (vy >= 0) & (vy < height) & (vx >= 0) & (vx < width)
                logit = tl.load(logits_ptr + row_base + k_in, mask=ok, other=float('-inf'))
                attn = tl.exp(logit.to(tl.float32) - row_max) / den
                v_off = ((b * height + vy) * width + vx) * channels + head * HEAD_DIM
                vals = tl.load(v_ptr + v_off[:, None] + offs_d[None, :],
                               mask=ok_v[:, None] & mask_d[None, :], other=0.0)
                acc += attn[:, None] * vals.to(tl.float32)
    out_off = (((b * height * width + offs_p) * channels + head * HEAD_DIM)[:, None]
               + offs_d[None, :])
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty),
             mask=mask_p[:, None] & mask_d[None, :])


def _bwd_logits_kernel(v_ptr, logits_ptr, gout_ptr, glogits_ptr, lse_ptr, height, width,
                       grid_h, grid_w, NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                       D_PAD: tl.constexpr, K: tl.constexpr, KK_PAD: tl.constexpr,
                       PADDING: tl.constexpr, STRIDE: tl.constexpr, BLOCK: tl.constexpr):
    """glogits[n, k_o, :] = A * (gA - sum(gA * A)), gA[k_in] = grad_out[pos(n,k_o)].V[pos(n,k_in)];
    also writes lse[n, k_o] = logsumexp_k_in logits[n, k_o, k_in] for the values kernel."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // NUM_HEADS).to(tl.int64)
    head = pid_bh % NUM_HEADS
    channels = NUM_HEADS * HEAD_DIM
    kk = K * K
    offs_n = pid_n * BLOCK + tl.arange(0, BLOCK)
    mask_n = offs_n < grid_h * grid_w
    i = offs_n // grid_w
    j = offs_n % grid_w
    offs_d = tl.arange(0, D_PAD)
    mask_d = offs_d < HEAD_DIM
    offs_k = tl.arange(0, KK_PAD)
    mask_k = offs_k < kk
    cell = b * grid_h * grid_w + offs_n
    head_base = cell * (NUM_HEADS * kk * kk) + head * kk * kk
    lse_base = (cell * NUM_HEADS + head) * kk
    row_mask = mask_n[:, None] & mask_k[None, :]
    for k_out in range(kk):
        gy_y = i * STRIDE - PADDING + k_out // K
        gy_x = j * STRIDE - PADDING + k_out % K
        ok_g = mask_n & (gy_y >= 0) & (gy_y < height) & (gy_x >= 0) & (gy_x < width)
        g_off = ((b * height + gy_y) * width + gy_x) * channels + head * HEAD_DIM
        gy = tl.load(gout_ptr + g_off[:, None] + offs_d[None, :],
                     mask=ok_g[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        grad_attn = tl.full((BLOCK, KK_PAD), 0.0, tl.float32)
        for k_in in range(kk):
            vy = i * STRIDE - PADDING + k_in // K
            vx = j * STRIDE - PADDING + k_in % K
            ok_v = mask_n & (vy >= 0) & (vy < height) & (vx >= 0) & (vx < width)
            v_off = ((b * height + vy) * width + vx) * channels + head * HEAD_DIM
            vals = tl.load(v_ptr + v_off[:, None] + offs_d[None, :],
                           mask=ok_v[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
            dot = tl.sum(gy * vals, axis=1)
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


def _bwd_values_kernel(logits_ptr, lse_ptr, gout_ptr, gv_ptr, height, width, grid_h, grid_w,
                       NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                       K: tl.constexpr, KK_PAD: tl.constexpr, PADDING: tl.constexpr,
                       STRIDE: tl.constexpr, BLOCK: tl.constexpr):
    """gv[q] = sum over cells n with pos(n, k_in) = q of sum_k_o A[n, k_o, k_in] gY[n, k_o]."""
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // NUM_HEADS).to(tl.int64)
    head = pid_bh % NUM_HEADS
    channels = NUM_HEADS * HEAD_DIM
    kk = K * K
    offs_p = pid_p * BLOCK + tl.arange(0, BLOCK)
    mask_p = offs_p < height * width
    y = offs_p // width
    x = offs_p % width
    offs_d = tl.arange(0, D_PAD)
    mask_d = offs_d < HEAD_DIM
    acc = tl.full((BLOCK, D_PAD), 0.0, tl.float32)
    for ki in tl.static_range(K):
        ty = y + PADDING - ki
        ty_pos = tl.where(ty >= 0, ty, 0)
        i = ty_pos // STRIDE
        ok_i = (ty >= 0) & (ty_pos % STRIDE == 0) & (i < grid_h)
        for kj in tl.static_range(K):
            tx = x + PADDING - kj
            tx_pos = tl.where(tx >= 0, tx, 0)
            j = tx_pos // STRIDE
            ok = mask_p & ok_i & (tx >= 0) & (tx_pos % STRIDE == 0) & (j < grid_w)
            cell = (b * grid_h + i) * grid_w + j
            col_base = cell * (NUM_HEADS * kk * kk) + head * kk * kk + ki * K + kj
            lse_base = (cell * NUM_HEADS + head) * kk
            for k_out in range(kk):
                logit = tl.load(logits_ptr + col_base + k_out * kk, mask=ok,
                                other=float('-inf')).to(tl.float32)
                lse = tl.load(lse_ptr + lse_base + k_out, mask=ok, other=0.0)
                attn = tl.exp(logit - lse)
                gy_y = i * STRIDE - PADDING + k_out // K
                gy_x = j * STRIDE - PADDING + k_out % K
                ok_g = ok & (gy_y >= 0) & (gy_y < height) & (gy_x >= 0) & (gy_x < width)
                g_off = ((b * height + gy_y) * width + gy_x) * channels + head * HEAD_DIM
                gy = tl.load(gout_ptr + g_off[:, None] + offs_d[None, :],
                             mask=ok_g[:, None] & mask_d[None, :], other=0.0)
                acc += attn[:, None] * gy.to(tl.float32)
    out_off = (((b * height * width + offs_p) * channels + head * HEAD_DIM)[:, None]
               + offs_d[None, :])
    tl.store(gv_ptr + out_off, acc.to(gv_ptr.dtype.element_ty),
             mask=mask_p[:, None] & mask_d[None, :])


# ----------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------

if HAS_TRITON:
    _FWD = triton.jit(_fwd_kernel)
    _BWD_LOGITS = triton.jit(_bwd_logits_kernel)
    _BWD_VALUES = triton.jit(_bwd_values_kernel)
    # True when TRITON_INTERPRET=1 was set before triton was imported: triton.jit then
    # returns interpreted kernels, which run on CPU tensors.
    INTERPRETED = not isinstance(_FWD, triton.runtime.JITFunction)
else:  # pragma: no cover
    _FWD = _BWD_LOGITS = _BWD_VALUES = None
    INTERPRETED = False


def _block() -> int:
    return BLOCK_PIXELS_INTERPRETED if INTERPRETED else BLOCK_PIXELS


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _meta(v: torch.Tensor, num_heads: int, kernel_size: int, padding: int,
          stride: int) -> Dict[str, int]:
    """Compile-time constants shared by the three kernels."""
    head_dim = v.shape[-1] // num_heads
    return dict(NUM_HEADS=num_heads, HEAD_DIM=head_dim, D_PAD=max(2, _next_pow2(head_dim)),
                K=kernel_size, KK_PAD=max(2, _next_pow2(kernel_size * kernel_size)),
                PADDING=padding, STRIDE=stride, BLOCK=_block())


def _launch(kernel: Any, grid: Tuple[int, int], device: torch.device, *args: Any,
            **meta: int) -> None:
    """Launch on ``device``'s stream; CPU tensors are only accepted by interpreted kernels."""
    if device.type == 'cuda' and not INTERPRETED:
        with torch.cuda.device(device):
            kernel[grid](*args, **meta, num_warps=NUM_WARPS)
    elif INTERPRETED:
        kernel[grid](*args, **meta)
    else:
        raise RuntimeError('outlook_attention_triton: tensors on CPU need TRITON_INTERPRET=1 '
                           'set before triton is imported')


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
    _launch(_FWD, grid, v.device, v, logits, out, height, width, h, w, **meta)
    return out


def triton_backward(grad_out: torch.Tensor, v: torch.Tensor, logits: torch.Tensor,
                    num_heads: int, kernel_size: int, padding: int,
                    stride: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch both backward kernels -> (grad_v (B, H, W, C), grad_logits (B, h, w, heads*K^4))."""
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
    _launch(_BWD_LOGITS, grid_n, v.device, v, logits, grad_out, grad_logits, lse,
            height, width, h, w, **meta)
    grad_v = torch.empty_like(v)
    grid_p = (triton.cdiv(height * width, _block()), batch * num_heads)
    _launch(_BWD_VALUES, grid_p, v.device, logits, lse, grad_out, grad_v,
            height, width, h, w, **meta)
    return grad_v, grad_logits


# ----------------------------------------------------------------------------------------
# torch.library custom ops + autograd
# ----------------------------------------------------------------------------------------

if HAS_TRITON:

    @torch.library.custom_op('mmvolo::outlook_fwd', mutates_args=())
    def _outlook_fwd_op(v: torch.Tensor, logits: torch.Tensor, num_heads: int,
                        kernel_size: int, padding: int, stride: int) -> torch.Tensor:
        return triton_forward(v, logits, num_heads, kernel_size, padding, stride)

    @_outlook_fwd_op.register_fake
    def _(v, logits, num_heads, kernel_size, padding, stride):
        return torch.empty_like(v, memory_format=torch.contiguous_format)

    @torch.library.custom_op('mmvolo::outlook_bwd', mutates_args=())
    def _outlook_bwd_op(grad_out: torch.Tensor, v: torch.Tensor, logits: torch.Tensor,
                        num_heads: int, kernel_size: int, padding: int,
                        stride: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return triton_backward(grad_out, v, logits, num_heads, kernel_size, padding, stride)

    @_outlook_bwd_op.register_fake
    def _(grad_out, v, logits, num_heads, kernel_size, padding, stride):
        return (torch.empty_like(v, memory_format=torch.contiguous_format),
                torch.empty_like(logits, memory_format=torch.contiguous_format))

    def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        v, logits, *params = inputs
        ctx.save_for_backward(v, logits)
        ctx.params = tuple(params)

    def _backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
        v, logits = ctx.saved_tensors
        grad_v, grad_logits = _outlook_bwd_op(grad_out, v, logits, *ctx.params)
        return grad_v, grad_logits, None, None, None, None

    _outlook_fwd_op.register_autograd(_backward, setup_context=_setup_context)


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
        raise RuntimeError('outlook_attention_triton needs the triton package')
    return _outlook_fwd_op(v, logits, num_heads, kernel_size, padding, stride)


def triton_supports(v: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether the 'triton' impl should run on these tensors (else the dispatcher falls back)."""
    if not HAS_TRITON or v.device != logits.device:
        return False
    if v.dtype not in SUPPORTED_DTYPES or logits.dtype not in SUPPORTED_DTYPES:
        return False
    return v.is_cuda or INTERPRETED


if HAS_TRITON:
    register_outlook_impl('triton', supports=triton_supports)(outlook_attention_triton)
