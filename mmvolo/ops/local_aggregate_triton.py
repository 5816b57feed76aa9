"""Fused Triton kernels of :func:`~mmvolo.ops.local_aggregate.local_aggregate` (forward and
backward, every configuration), registered as ``impl='triton'``.

Tiling. Channels are cut into *segments* of ``SEG = gcd(C/G, C/Go)`` channels, so each
segment lies in one weight group and one offset group. A program owns a tile of BLOCK
pixels x SPB consecutive segments (a (BLOCK, SPB, SEG) tile, channels contiguous): per tap
it loads the weight (and the offset) of each (pixel, segment) once, a (BLOCK, SPB, 1) tile,
and broadcasts it over the segment's channels. Static weights are the same loads with pixel
stride 0.

Kernels (n: output grid cell, p / q: input pixel, pos0: the fixed window position, pos:
pos0 plus the offset, sampled bilinearly with zeros outside the image):

* ``_fwd_rows`` (fold=False), one program per (cells, segments): softmax statistics over the
  K*K taps (max, then sum: two loads of the weight row), then
  ``out[n] = sum_k A[n, k] * V[pos(n, k)]``; writes the row's log-sum-exp (fp32, or fp64 for
  fp64 inputs), which the backward reuses.
* ``_fwd_fold`` (fold=True), one program per (input pixels p, segments): a gather, no
  atomics. For each k_o the one cell n with ``pos0(n, k_o) = p`` is found arithmetically
  (``i = (y + P - a*D) / S`` where that divides and is in range), then
  ``out[p] += sum_k_in A[n, k_o, k_in] * V[pos(n, k_in)]``; each (n, k_o) row belongs to
  exactly one pixel, so its statistics are computed once and its log-sum-exp stored.
* ``_bwd_rows``, one program per (cells, segments): the weight gradient
  ``gA[n, k(_o, k_in)] = g(n(, k_o)) . s(n, k(_in))`` (g = grad_out, or grad_out at
  pos0(n, k_o) for fold), with the softmax backward ``A * (gA - sum gA*A)`` in two passes
  (the raw gA stored to a scratch buffer, a barrier, read back); the offset gradient
  (d s / d(dy, dx) from the four corners); and, for offsets only, the value gradient:
  ``grad_s = A * g`` (fold: ``sum_k_o A[n, k_o, k_in] g(n, k_o)``) scattered onto the four
  corners with atomic adds (fp32/fp64 buffer) - the only atomics, and the only result
  whose last bits depend on the order threads run in (everything else is deterministic).
* ``_bwd_values`` (no offsets), one program per (input pixels q, segments): the value
  gradient as a gather over the cells n and taps k with ``pos(n, k) = q`` (zeros boundary:
  one candidate per tap; 'clamp': up to K per axis, the windows shifted at the border),
  ``gV[q] = sum A[n, k] g(n)`` (fold: ``sum_k_o A[n, k_o, k] g(pos0(n, k_o))``).

Partial sums per segment: when a segment is narrower than its group (Go splits the group,
or depthwise G = C), the weight / offset gradients are written per segment and summed over
the group's segments afterwards (the softmax backward is linear in gA, so the per-segment
parts add up); static weights are summed over pixels per program and then over programs.
The static softmax backward runs on the (G, K*K[, K*K]) sums. No shape assert: every tile
is masked (pixels, segments, the segment's padded channels).

Arithmetic is fp32 for fp32/fp16/bf16 inputs and fp64 for fp64; results are cast to the
input dtypes. Launched through :func:`~mmvolo.ops.custom_op.define_op`
(``mmvolo::local_aggregate_triton_fwd`` / ``_bwd``): one node for ``torch.compile``.

With ``TRITON_INTERPRET=1`` set before triton is first imported (as for
:mod:`.outlook_triton`) the kernels run interpreted on CPU tensors (tests). The registered
``'triton'`` impl supports CUDA tensors (fp32/fp16/bf16/fp64), and CPU tensors only when
interpreted; without a working triton it is registered as known but unavailable.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .custom_op import define_op
from .local_aggregate import LOCAL_AGGREGATE_IMPLS, Geometry
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

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
#: pixels (grid cells) per program on the GPU: with CHANNELS_PER_PROGRAM, compiled ahead of
#: time for sm_90 (fp32, num_warps=4) every kernel of the six configurations of the GPU
#: report fits in <= 148 registers without spills (docs/performance.md)
BLOCK_PIXELS = 16
BLOCK_PIXELS_INTERPRETED = 32  # fewer, larger programs: the interpreter pays per program
CHANNELS_PER_PROGRAM = 32  # about this many channels (whole segments) per program
NUM_WARPS = 4
#: below 'fast': opt-in (``impl='triton'`` / $MMVOLO_LOCAL_AGGREGATE_IMPL=triton) until the GPU
#: report has run it on a GPU; then raise it above 'fast' (10) so that 'auto' takes it on CUDA
PRIORITY = 5


# ----------------------------------------------------------------------------------------
# Index helpers (``_jit`` is ``triton.jit`` when triton is importable)
# ----------------------------------------------------------------------------------------

@_jit
def _program(npix, NSEG: tl.constexpr, SEG: tl.constexpr, SEG_PAD: tl.constexpr,
             SPB: tl.constexpr, BLOCK: tl.constexpr):
    """This program's pixels (flat, mask), batch, segments (index, mask) and channel tile:
    channel offsets (1, SPB, SEG_PAD) and their mask."""
    pid1 = tl.program_id(1)
    blocks = (NSEG + SPB - 1) // SPB
    b = (pid1 // blocks).to(tl.int64)
    seg = (pid1 % blocks) * SPB + tl.arange(0, SPB)
    seg_ok = seg < NSEG
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    lane = tl.arange(0, SEG_PAD)
    chan = seg[None, :, None] * SEG + lane[None, None, :]
    chan_ok = seg_ok[None, :, None] & (lane < SEG)[None, None, :]
    return offs, offs < npix, b, seg, seg_ok, chan, chan_ok


@_jit
def _tap(i, a, size, K: tl.constexpr, S: tl.constexpr, P: tl.constexpr, D: tl.constexpr,
         CLAMP: tl.constexpr):
    """Fixed window position along one axis of cell index i at tap a (module docstring of
    :mod:`.local_aggregate`): i*S - P + a*D, or the clamped (neighborhood) window."""
    if CLAMP:
        r = i % D
        members = (size - r + D - 1) // D
        start = tl.maximum(i // D - K // 2, 0)
        start = tl.minimum(start, members - K)
        pos = r + D * (start + a)
    else:
        pos = i * S - P + a * D
    return pos


@_jit
def _cover(y, a, cand, size, out_size, K: tl.constexpr, S: tl.constexpr, P: tl.constexpr,
           D: tl.constexpr, CLAMP: tl.constexpr):
    """Candidate ``cand`` of the cell indices i with _tap(i, a) == y, and whether it is one
    (zeros: the single i = (y + P - a*D) / S; clamp: a range of up to K cells). Integer
    division only of non-negative numbers."""
    if CLAMP:
        r = y % D
        members = (size - r + D - 1) // D
        start = y // D - a
        lo = tl.where(start == 0, 0, start + K // 2)
        hi = tl.where(start == members - K, members - 1, start + K // 2)
        u = lo + cand
        ok = (start >= 0) & (start <= members - K) & (u <= hi)
        i = r + D * u
    else:
        t = y + P - a * D
        t_pos = tl.where(t >= 0, t, 0)
        i = t_pos // S
        ok = (t >= 0) & (t_pos % S == 0) & (i < out_size)
    return tl.where(ok, i, 0), ok


@_jit
def _load_px(ptr, b, py, px, H, W, C: tl.constexpr, chan, chan_ok, valid, ACC: tl.constexpr):
    """Tile of ``ptr`` (B, H, W, C) at integer positions (py, px) (zeros outside)."""
    inside = valid & (py >= 0) & (py < H) & (px >= 0) & (px < W)
    py = tl.where(inside, py, 0)
    px = tl.where(inside, px, 0)
    base = ((b * H + py) * W + px) * C
    return tl.load(ptr + base + chan, mask=inside & chan_ok, other=0.0).to(ACC)


@_jit
def _sample(v_ptr, off_ptr, b, cell, i, j, k, ogroup, valid, H, W, C: tl.constexpr,
            chan, chan_ok, GO: tl.constexpr, K: tl.constexpr, S: tl.constexpr,
            P: tl.constexpr, D: tl.constexpr, CLAMP: tl.constexpr, HAS_OFF: tl.constexpr,
            ACC: tl.constexpr):
    """Samples s of tap k of cells (i, j) (flat index ``cell`` incl. batch) and, with
    offsets, d s / d dy and d s / d dx: three (BLOCK, SPB, SEG_PAD) tiles."""
    py = _tap(i, k // K, H, K, S, P, D, CLAMP)[:, None, None]
    px = _tap(j, k % K, W, K, S, P, D, CLAMP)[:, None, None]
    if HAS_OFF:
        addr = ((cell[:, None, None] * GO + ogroup[None, :, None]) * (K * K) + k) * 2
        fy = py.to(ACC) + tl.load(off_ptr + addr, mask=valid, other=0.0).to(ACC)
        fx = px.to(ACC) + tl.load(off_ptr + addr + 1, mask=valid, other=0.0).to(ACC)
        # far outside the image every corner reads zero: clamping there changes nothing
        fy = tl.minimum(tl.maximum(fy, -3.0), H + 2.0)
        fx = tl.minimum(tl.maximum(fx, -3.0), W + 2.0)
        y0f = tl.floor(fy)
        x0f = tl.floor(fx)
        ly = fy - y0f
        lx = fx - x0f
        hy = 1.0 - ly
        hx = 1.0 - lx
        y0 = y0f.to(tl.int32)
        x0 = x0f.to(tl.int32)
        v00 = _load_px(v_ptr, b, y0, x0, H, W, C, chan, chan_ok, valid, ACC)
        v01 = _load_px(v_ptr, b, y0, x0 + 1, H, W, C, chan, chan_ok, valid, ACC)
        v10 = _load_px(v_ptr, b, y0 + 1, x0, H, W, C, chan, chan_ok, valid, ACC)
        v11 = _load_px(v_ptr, b, y0 + 1, x0 + 1, H, W, C, chan, chan_ok, valid, ACC)
        s = hy * (hx * v00 + lx * v01) + ly * (hx * v10 + lx * v11)
        ds_dy = hx * (v10 - v00) + lx * (v11 - v01)
        ds_dx = hy * (v01 - v00) + ly * (v11 - v10)
    else:
        s = _load_px(v_ptr, b, py, px, H, W, C, chan, chan_ok, valid, ACC)
        ds_dy = s
        ds_dx = s
    return s, ds_dy, ds_dx


@_jit
def _scatter(gv_ptr, off_ptr, b, cell, i, j, k, ogroup, valid, val, H, W, C: tl.constexpr,
             chan, chan_ok, GO: tl.constexpr, K: tl.constexpr, S: tl.constexpr,
             P: tl.constexpr, D: tl.constexpr):
    """Atomic adds of ``val`` (d loss / d samples of tap k) onto the 4 bilinear corners."""
    addr = ((cell[:, None, None] * GO + ogroup[None, :, None]) * (K * K) + k) * 2
    py = _tap(i, k // K, H, K, S, P, D, False)[:, None, None]
    px = _tap(j, k % K, W, K, S, P, D, False)[:, None, None]
    fy = py.to(val.dtype) + tl.load(off_ptr + addr, mask=valid, other=0.0).to(val.dtype)
    fx = px.to(val.dtype) + tl.load(off_ptr + addr + 1, mask=valid, other=0.0).to(val.dtype)
    fy = tl.minimum(tl.maximum(fy, -3.0), H + 2.0)
    fx = tl.minimum(tl.maximum(fx, -3.0), W + 2.0)
    y0f = tl.floor(fy)
    x0f = tl.floor(fx)
    ly = fy - y0f
    lx = fx - x0f
    y0 = y0f.to(tl.int32)
    x0 = x0f.to(tl.int32)
    for corner in tl.static_range(4):
        cy = y0 + corner // 2
        cx = x0 + corner % 2
        wy = ly if corner // 2 == 1 else 1.0 - ly
        wx = lx if corner % 2 == 1 else 1.0 - lx
        inside = valid & (cy >= 0) & (cy < H) & (cx >= 0) & (cx < W)
        cy = tl.where(inside, cy, 0)
        cx = tl.where(inside, cx, 0)
        base = ((b * H + cy) * W + cx) * C
        tl.atomic_add(gv_ptr + base + chan, val * (wy * wx), mask=inside & chan_ok,
                      sem="relaxed")  # a sum: no ordering needed


@_jit
def _weight_base(cell, wgroup, G: tl.constexpr, ROW: tl.constexpr, STATIC: tl.constexpr):
    """Offset of weight[n, g, 0] per (pixel, segment), (BLOCK, SPB, 1); ROW elements per
    group (K*K, or K*K*K*K with fold); static weights: pixel stride 0."""
    group = (wgroup * ROW)[None, :, None]
    if STATIC:
        base = cell[:, None, None] * 0 + group
    else:
        base = cell[:, None, None] * (G * ROW) + group
    return base


@_jit
def _row_stats(w_ptr, base, valid, KK: tl.constexpr, ACC: tl.constexpr):
    """(max, sum of exp(w - max)) over the KK weights at base + k (two passes)."""
    mx = tl.full(base.shape, float('-inf'), ACC)
    for k in range(KK):
        mx = tl.maximum(mx, tl.load(w_ptr + base + k, mask=valid, other=0.0).to(ACC))
    mx = tl.where(valid, mx, 0.0)
    den = tl.zeros(base.shape, ACC)
    for k in range(KK):
        den += tl.exp(tl.load(w_ptr + base + k, mask=valid, other=0.0).to(ACC) - mx)
    return mx, tl.where(valid, den, 1.0)


@_jit
def _attn(w_ptr, addr, lse, valid, SOFTMAX: tl.constexpr, ACC: tl.constexpr):
    """A at ``addr``: the weight, or exp(weight - log-sum-exp of its row); 0 where masked."""
    w = tl.load(w_ptr + addr, mask=valid, other=0.0).to(ACC)
    if SOFTMAX:
        w = tl.exp(w - lse)
    return tl.where(valid, w, 0.0)


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------

@_jit
def _fwd_rows(v_ptr, w_ptr, off_ptr, out_ptr, lse_ptr, H, W, Ho, Wo, C: tl.constexpr,
              G: tl.constexpr, GO: tl.constexpr, NSEG: tl.constexpr, SEG: tl.constexpr,
              SEG_PAD: tl.constexpr, SPB: tl.constexpr, CG: tl.constexpr,
              CGO: tl.constexpr, K: tl.constexpr, S: tl.constexpr, P: tl.constexpr,
              D: tl.constexpr, CLAMP: tl.constexpr, HAS_OFF: tl.constexpr,
              SOFTMAX: tl.constexpr, STATIC: tl.constexpr, ACC: tl.constexpr,
              BLOCK: tl.constexpr):
    """fold=False: out[n] = sum_k A[n, k] s(n, k); lse[n, seg] for softmax."""
    offs, mask, b, seg, seg_ok, chan, chan_ok = _program(Ho * Wo, NSEG, SEG, SEG_PAD, SPB,
                                                         BLOCK)
    KK: tl.constexpr = K * K
    i = offs // Wo
    j = offs % Wo
    cell = b * Ho * Wo + offs
    wgroup = seg * SEG // CG
    ogroup = seg * SEG // CGO
    valid = mask[:, None, None] & seg_ok[None, :, None]
    wb = _weight_base(cell, wgroup, G, KK, STATIC)
    lse = tl.zeros(wb.shape, ACC)
    if SOFTMAX:
        mx, den = _row_stats(w_ptr, wb, valid, KK, ACC)
        lse = mx + tl.log(den)
        tl.store(lse_ptr + cell[:, None, None] * NSEG + seg[None, :, None], lse, mask=valid)
    acc = tl.zeros((BLOCK, SPB, SEG_PAD), ACC)
    for k in range(KK):
        a = _attn(w_ptr, wb + k, lse, valid, SOFTMAX, ACC)
        s, _, _ = _sample(v_ptr, off_ptr, b, cell, i, j, k, ogroup, valid, H, W, C, chan,
                          chan_ok, GO, K, S, P, D, CLAMP, HAS_OFF, ACC)
        acc += a * s
    tl.store(out_ptr + cell[:, None, None] * C + chan, acc.to(out_ptr.dtype.element_ty),
             mask=valid & chan_ok)


@_jit
def _fwd_fold(v_ptr, w_ptr, off_ptr, out_ptr, lse_ptr, H, W, Ho, Wo, C: tl.constexpr,
              G: tl.constexpr, GO: tl.constexpr, NSEG: tl.constexpr, SEG: tl.constexpr,
              SEG_PAD: tl.constexpr, SPB: tl.constexpr, CG: tl.constexpr,
              CGO: tl.constexpr, K: tl.constexpr, S: tl.constexpr, P: tl.constexpr,
              D: tl.constexpr, CLAMP: tl.constexpr, HAS_OFF: tl.constexpr,
              SOFTMAX: tl.constexpr, STATIC: tl.constexpr, ACC: tl.constexpr,
              BLOCK: tl.constexpr):
    """fold=True: out[p] = sum over the cells n with pos0(n, k_o) = p of
    sum_k_in A[n, k_o, k_in] s(n, k_in); lse[n, seg, k_o] for softmax."""
    offs, mask, b, seg, seg_ok, chan, chan_ok = _program(H * W, NSEG, SEG, SEG_PAD, SPB,
                                                         BLOCK)
    KK: tl.constexpr = K * K
    y = offs // W
    x = offs % W
    wgroup = seg * SEG // CG
    ogroup = seg * SEG // CGO
    acc = tl.zeros((BLOCK, SPB, SEG_PAD), ACC)
    for k_out in range(KK):
        i, ok_i = _cover(y, k_out // K, 0, H, Ho, K, S, P, D, False)
        j, ok_j = _cover(x, k_out % K, 0, W, Wo, K, S, P, D, False)
        ok = mask & ok_i & ok_j
        cell = b * Ho * Wo + i * Wo + j
        valid = ok[:, None, None] & seg_ok[None, :, None]
        wb = _weight_base(cell, wgroup, G, KK * KK, STATIC) + k_out * KK
        lse = tl.zeros(wb.shape, ACC)
        if SOFTMAX:
            mx, den = _row_stats(w_ptr, wb, valid, KK, ACC)
            lse = mx + tl.log(den)
            tl.store(lse_ptr + (cell[:, None, None] * NSEG + seg[None, :, None]) * KK + k_out,
                     lse, mask=valid)
        for k_in in range(KK):
            a = _attn(w_ptr, wb + k_in, lse, valid, SOFTMAX, ACC)
            s, _, _ = _sample(v_ptr, off_ptr, b, cell, i, j, k_in, ogroup, valid, H, W, C,
                              chan, chan_ok, GO, K, S, P, D, False, HAS_OFF, ACC)
            acc += a * s
    tl.store(out_ptr + (b * H * W + offs)[:, None, None] * C + chan,
             acc.to(out_ptr.dtype.element_ty),
             mask=mask[:, None, None] & chan_ok)


@_jit
def _store_weight_grad(gw_ptr, addr, static_addr, ga, valid, seg_ok, STATIC: tl.constexpr):
    """Store a (BLOCK, SPB, 1) weight-gradient tile: per cell, or summed over the program's
    cells (static weights, one partial row (SPB, 1) per program)."""
    ga = tl.where(valid, ga, 0.0)
    if STATIC:
        tl.store(gw_ptr + static_addr, tl.sum(ga, axis=0), mask=seg_ok[:, None])
    else:
        tl.store(gw_ptr + addr, ga, mask=valid)


@_jit
def _bwd_rows(v_ptr, w_ptr, off_ptr, lse_ptr, gout_ptr, gw_ptr, raw_ptr, goff_ptr, gv_ptr,
              H, W, Ho, Wo, C: tl.constexpr, G: tl.constexpr, GO: tl.constexpr,
              NSEG: tl.constexpr, SEG: tl.constexpr, SEG_PAD: tl.constexpr,
              SPB: tl.constexpr, CG: tl.constexpr, CGO: tl.constexpr, K: tl.constexpr,
              S: tl.constexpr, P: tl.constexpr, D: tl.constexpr, CLAMP: tl.constexpr,
              HAS_OFF: tl.constexpr, SOFTMAX: tl.constexpr, STATIC: tl.constexpr,
              FOLD: tl.constexpr, NEED_W: tl.constexpr, NEED_OFF: tl.constexpr,
              NEED_V: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Per cell: weight gradient (softmax backward included; static: this program's sum),
    offset gradient, and with offsets the value gradient (atomics). The raw weight gradient
    goes to ``raw_ptr`` (``gw_ptr`` itself unless the dynamic softmax backward rewrites it:
    then a scratch buffer, so that no element is read after it was rewritten)."""
    offs, mask, b, seg, seg_ok, chan, chan_ok = _program(Ho * Wo, NSEG, SEG, SEG_PAD, SPB,
                                                         BLOCK)
    KK: tl.constexpr = K * K
    ROW: tl.constexpr = KK * KK if FOLD else KK
    i = offs // Wo
    j = offs % Wo
    cell = b * Ho * Wo + offs
    wgroup = seg * SEG // CG
    ogroup = seg * SEG // CGO
    valid = mask[:, None, None] & seg_ok[None, :, None]
    wb = _weight_base(cell, wgroup, G, ROW, STATIC)
    gw_row = (cell[:, None, None] * NSEG + seg[None, :, None]) * ROW
    programs = tl.num_programs(0)
    gw_static = ((b * programs + tl.program_id(0)) * NSEG + seg[:, None]) * ROW
    go_row = (cell[:, None, None] * NSEG + seg[None, :, None]) * KK
    chan_mask = valid & chan_ok
    if not FOLD:
        g = tl.load(gout_ptr + cell[:, None, None] * C + chan, mask=chan_mask,
                    other=0.0).to(ACC)
        lse = tl.zeros(wb.shape, ACC)
        if SOFTMAX:
            lse = tl.load(lse_ptr + cell[:, None, None] * NSEG + seg[None, :, None],
                          mask=valid, other=0.0).to(ACC)
        dot = tl.zeros(wb.shape, ACC)
        for k in range(KK):
            a = _attn(w_ptr, wb + k, lse, valid, SOFTMAX, ACC)
            s, ds_dy, ds_dx = _sample(v_ptr, off_ptr, b, cell, i, j, k, ogroup, valid, H, W,
                                      C, chan, chan_ok, GO, K, S, P, D, CLAMP, HAS_OFF, ACC)
            if NEED_W:
                ga = tl.sum(g * s, axis=2)[:, :, None]
                if SOFTMAX and not STATIC:
                    dot += ga * a
                _store_weight_grad(raw_ptr, gw_row + k, gw_static + k, ga, valid, seg_ok,
                                   STATIC)
            if HAS_OFF:
                gs = g * a
                if NEED_OFF:
                    addr = (go_row + k) * 2
                    tl.store(goff_ptr + addr, tl.sum(gs * ds_dy, axis=2)[:, :, None],
                             mask=valid)
                    tl.store(goff_ptr + addr + 1, tl.sum(gs * ds_dx, axis=2)[:, :, None],
                             mask=valid)
                if NEED_V:
                    _scatter(gv_ptr, off_ptr, b, cell, i, j, k, ogroup, valid, gs, H, W, C,
                             chan, chan_ok, GO, K, S, P, D)
        if NEED_W and SOFTMAX and not STATIC:
            tl.debug_barrier()
            for k in range(KK):
                a = _attn(w_ptr, wb + k, lse, valid, SOFTMAX, ACC)
                ga = tl.load(raw_ptr + gw_row + k, mask=valid, other=0.0)
                tl.store(gw_ptr + gw_row + k, a * (ga - dot), mask=valid)
    else:
        if NEED_W:
            for k_out in range(KK):
                yo = _tap(i, k_out // K, H, K, S, P, D, False)
                xo = _tap(j, k_out % K, W, K, S, P, D, False)
                row_ok = valid & ((yo >= 0) & (yo < H) & (xo >= 0) & (xo < W))[:, None, None]
                gy = _load_px(gout_ptr, b, yo[:, None, None], xo[:, None, None], H, W, C, chan,
                              chan_ok, valid, ACC)
                lse = tl.zeros(wb.shape, ACC)
                if SOFTMAX:
                    lse = tl.load(lse_ptr + (cell[:, None, None] * NSEG + seg[None, :, None])
                                  * KK + k_out, mask=row_ok, other=0.0).to(ACC)
                dot = tl.zeros(wb.shape, ACC)
                for k_in in range(KK):
                    s, _, _ = _sample(v_ptr, off_ptr, b, cell, i, j, k_in, ogroup, valid, H, W,
                                      C, chan, chan_ok, GO, K, S, P, D, False, HAS_OFF, ACC)
                    ga = tl.sum(gy * s, axis=2)[:, :, None]
                    if SOFTMAX and not STATIC:
                        a = _attn(w_ptr, wb + k_out * KK + k_in, lse, row_ok, SOFTMAX, ACC)
                        dot += ga * a
                    idx = k_out * KK + k_in
                    _store_weight_grad(raw_ptr, gw_row + idx, gw_static + idx, ga, valid,
                                       seg_ok, STATIC)
                if SOFTMAX and not STATIC:
                    tl.debug_barrier()
                    for k_in in range(KK):
                        idx = k_out * KK + k_in
                        a = _attn(w_ptr, wb + idx, lse, row_ok, SOFTMAX, ACC)
                        ga = tl.load(raw_ptr + gw_row + idx, mask=valid, other=0.0)
                        tl.store(gw_ptr + gw_row + idx, a * (ga - dot), mask=valid)
        if HAS_OFF and (NEED_OFF or NEED_V):
            for k_in in range(KK):
                gs = tl.zeros((BLOCK, SPB, SEG_PAD), ACC)
                for k_out in range(KK):
                    yo = _tap(i, k_out // K, H, K, S, P, D, False)
                    xo = _tap(j, k_out % K, W, K, S, P, D, False)
                    row_ok = valid & ((yo >= 0) & (yo < H) & (xo >= 0)
                                      & (xo < W))[:, None, None]
                    lse = tl.zeros(wb.shape, ACC)
                    if SOFTMAX:
                        lse = tl.load(lse_ptr + (cell[:, None, None] * NSEG
                                                 + seg[None, :, None]) * KK + k_out,
                                      mask=row_ok, other=0.0).to(ACC)
                    a = _attn(w_ptr, wb + k_out * KK + k_in, lse, row_ok, SOFTMAX, ACC)
                    gy = _load_px(gout_ptr, b, yo[:, None, None], xo[:, None, None], H, W, C,
                                  chan, chan_ok, valid, ACC)
                    gs += a * gy
                if NEED_OFF:
                    _, ds_dy, ds_dx = _sample(v_ptr, off_ptr, b, cell, i, j, k_in, ogroup,
                                              valid, H, W, C, chan, chan_ok, GO, K, S, P, D,
                                              False, HAS_OFF, ACC)
                    addr = (go_row + k_in) * 2
                    tl.store(goff_ptr + addr, tl.sum(gs * ds_dy, axis=2)[:, :, None],
                             mask=valid)
                    tl.store(goff_ptr + addr + 1, tl.sum(gs * ds_dx, axis=2)[:, :, None],
                             mask=valid)
                if NEED_V:
                    _scatter(gv_ptr, off_ptr, b, cell, i, j, k_in, ogroup, valid, gs, H, W, C,
                             chan, chan_ok, GO, K, S, P, D)


@_jit
def _bwd_values(w_ptr, lse_ptr, gout_ptr, gv_ptr, H, W, Ho, Wo, C: tl.constexpr,
                G: tl.constexpr, NSEG: tl.constexpr, SEG: tl.constexpr,
                SEG_PAD: tl.constexpr, SPB: tl.constexpr, CG: tl.constexpr,
                K: tl.constexpr, S: tl.constexpr, P: tl.constexpr, D: tl.constexpr,
                CLAMP: tl.constexpr, SOFTMAX: tl.constexpr, STATIC: tl.constexpr,
                FOLD: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Without offsets: gV[q] = sum over the (n, k) with pos(n, k) = q of A[n, k] g(n)
    (fold: sum_k_o A[n, k_o, k] g(pos0(n, k_o))): a gather, no atomics."""
    offs, mask, b, seg, seg_ok, chan, chan_ok = _program(H * W, NSEG, SEG, SEG_PAD, SPB,
                                                         BLOCK)
    KK: tl.constexpr = K * K
    ROW: tl.constexpr = KK * KK if FOLD else KK
    CANDS: tl.constexpr = K if CLAMP else 1
    y = offs // W
    x = offs % W
    wgroup = seg * SEG // CG
    acc = tl.zeros((BLOCK, SPB, SEG_PAD), ACC)
    for k in range(KK):
        for ci in range(CANDS):  # not unrolled: K*K unrolled copies spill for K = 7
            i, ok_i = _cover(y, k // K, ci, H, Ho, K, S, P, D, CLAMP)
            for cj in range(CANDS):
                j, ok_j = _cover(x, k % K, cj, W, Wo, K, S, P, D, CLAMP)
                ok = mask & ok_i & ok_j
                cell = b * Ho * Wo + i * Wo + j
                valid = ok[:, None, None] & seg_ok[None, :, None]
                wb = _weight_base(cell, wgroup, G, ROW, STATIC)
                if not FOLD:
                    lse = tl.zeros(wb.shape, ACC)
                    if SOFTMAX:
                        lse = tl.load(lse_ptr + cell[:, None, None] * NSEG + seg[None, :, None],
                                      mask=valid, other=0.0).to(ACC)
                    a = _attn(w_ptr, wb + k, lse, valid, SOFTMAX, ACC)
                    g = tl.load(gout_ptr + cell[:, None, None] * C + chan,
                                mask=valid & chan_ok, other=0.0).to(ACC)
                    acc += a * g
                else:
                    for k_out in range(KK):
                        yo = _tap(i, k_out // K, H, K, S, P, D, False)
                        xo = _tap(j, k_out % K, W, K, S, P, D, False)
                        row_ok = valid & ((yo >= 0) & (yo < H) & (xo >= 0)
                                          & (xo < W))[:, None, None]
                        lse = tl.zeros(wb.shape, ACC)
                        if SOFTMAX:
                            lse = tl.load(lse_ptr + (cell[:, None, None] * NSEG
                                                     + seg[None, :, None]) * KK + k_out,
                                          mask=row_ok, other=0.0).to(ACC)
                        a = _attn(w_ptr, wb + k_out * KK + k, lse, row_ok, SOFTMAX, ACC)
                        gy = _load_px(gout_ptr, b, yo[:, None, None], xo[:, None, None], H, W,
                                      C, chan, chan_ok, row_ok, ACC)
                        acc += a * gy
    tl.store(gv_ptr + (b * H * W + offs)[:, None, None] * C + chan,
             acc.to(gv_ptr.dtype.element_ty), mask=mask[:, None, None] & chan_ok)


# ----------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------

#: True when TRITON_INTERPRET=1 was set before triton was imported (kernels run on CPU).
INTERPRETED = is_interpreted(_fwd_rows)


def _block() -> int:
    return BLOCK_PIXELS_INTERPRETED if INTERPRETED else BLOCK_PIXELS


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def plan(channels: int, groups: int, off_groups: int) -> dict[str, int]:
    """The channel tiling: segments of gcd(C/G, C/Go) channels, SPB of them per program."""
    cg = channels // groups
    cgo = channels // off_groups if off_groups else cg
    seg = math.gcd(cg, cgo)
    nseg = channels // seg
    seg_pad = next_pow2(seg)
    spb = min(next_pow2(nseg), max(1, CHANNELS_PER_PROGRAM // seg_pad))
    spb = 1 << (spb.bit_length() - 1)  # a power of two
    return dict(C=channels, G=groups, GO=off_groups or groups, NSEG=nseg, SEG=seg,
                SEG_PAD=seg_pad, SPB=spb, CG=cg, CGO=cgo)


def _launch(kernel: Any, grid: tuple[int, int], device: torch.device, *args: Any,
            **meta: Any) -> None:
    launch(kernel, grid, device, 'local_aggregate_triton', NUM_WARPS, *args, **meta)


def _params(value: torch.Tensor, kernel_size: int, stride: int, padding: int, dilation: int,
            clamp: int, groups: int, off_groups: int, softmax: int, static: int) -> dict:
    meta = plan(value.shape[-1], groups, off_groups)
    acc = tl.float64 if value.dtype == torch.float64 else tl.float32
    return dict(meta, K=kernel_size, S=stride, P=padding, D=dilation, CLAMP=bool(clamp),
                HAS_OFF=off_groups > 0, SOFTMAX=bool(softmax), STATIC=bool(static), ACC=acc,
                BLOCK=_block())


def _lse_shape(batch: int, out_h: int, out_w: int, nseg: int, kk: int,
               fold: int) -> tuple[int, ...]:
    return (batch, out_h, out_w, nseg, kk) if fold else (batch, out_h, out_w, nseg)


def triton_forward(value: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor,
                   kernel_size: int, stride: int, padding: int, dilation: int, clamp: int,
                   out_h: int, out_w: int, groups: int, off_groups: int, softmax: int,
                   fold: int, static: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): out (B, Ho, Wo, C) or, with fold, (B, H, W, C); lse the softmax
    log-sum-exp per (cell, segment[, k_o]) (empty without softmax). ``offset`` is empty
    when ``off_groups`` is 0."""
    batch, height, width, channels = value.shape
    meta = _params(value, kernel_size, stride, padding, dilation, clamp, groups, off_groups,
                   softmax, static)
    kk = kernel_size * kernel_size
    acc = _acc_dtype(value.dtype)
    # fold: rows (n, k_o) landing outside the image are never visited; they stay 0
    lse = value.new_zeros(_lse_shape(batch, out_h, out_w, meta['NSEG'], kk, fold) if softmax
                          else (0,), dtype=acc)
    out_shape = (batch, height, width, channels) if fold else (batch, out_h, out_w, channels)
    out = value.new_empty(out_shape)
    pixels = height * width if fold else out_h * out_w
    grid = (triton.cdiv(pixels, _block()), batch * triton.cdiv(meta['NSEG'], meta['SPB']))
    kernel = _fwd_fold if fold else _fwd_rows
    _launch(kernel, grid, value.device, value, weight, offset, out, lse, height, width, out_h,
            out_w, **meta)
    return out, lse


def _forward_fake(value: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor,
                  kernel_size: int, stride: int, padding: int, dilation: int, clamp: int,
                  out_h: int, out_w: int, groups: int, off_groups: int, softmax: int,
                  fold: int, static: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch, height, width, channels = value.shape
    nseg = plan(channels, groups, off_groups)['NSEG']
    kk = kernel_size * kernel_size
    lse = value.new_empty(_lse_shape(batch, out_h, out_w, nseg, kk, fold) if softmax else (0,),
                          dtype=_acc_dtype(value.dtype))
    out = value.new_empty((batch, height, width, channels) if fold
                          else (batch, out_h, out_w, channels))
    return out, lse


def triton_backward(grad_out: torch.Tensor, value: torch.Tensor, weight: torch.Tensor,
                    offset: torch.Tensor, lse: torch.Tensor, kernel_size: int, stride: int,
                    padding: int, dilation: int, clamp: int, out_h: int, out_w: int,
                    groups: int, off_groups: int, softmax: int, fold: int, static: int,
                    needs: tuple[bool, ...] = (True, True, True)) -> tuple:
    """(grad value, grad weight, grad offset), None where ``needs`` says not wanted."""
    need_v, need_w, need_off = (bool(n) for n in needs)
    need_off = need_off and off_groups > 0
    batch, height, width, channels = value.shape
    meta = _params(value, kernel_size, stride, padding, dilation, clamp, groups, off_groups,
                   softmax, static)
    nseg, kk = meta['NSEG'], kernel_size * kernel_size
    row = kk * kk if fold else kk
    acc = _acc_dtype(value.dtype)
    seg_blocks = triton.cdiv(nseg, meta['SPB'])
    grid_n = (triton.cdiv(out_h * out_w, _block()), batch * seg_blocks)
    grid_p = (triton.cdiv(height * width, _block()), batch * seg_blocks)
    deform = off_groups > 0
    empty = value.new_empty(0, dtype=acc)
    gw = empty
    if need_w:
        rows = (batch * grid_n[0],) if static else (batch, out_h, out_w)
        gw = value.new_empty((*rows, nseg, row), dtype=acc)
    goff = value.new_empty((batch, out_h, out_w, nseg, kk, 2), dtype=acc) if need_off \
        else empty
    gv_acc = value.new_zeros(value.shape, dtype=acc) if (need_v and deform) else empty
    if need_w or (deform and (need_v or need_off)):
        raw = torch.empty_like(gw) if (need_w and softmax and not static) else gw
        _launch(_bwd_rows, grid_n, value.device, value, weight, offset, lse, grad_out, gw, raw,
                goff, gv_acc, height, width, out_h, out_w, FOLD=bool(fold), NEED_W=need_w,
                NEED_OFF=need_off, NEED_V=need_v and deform, **meta)
    grad_v = None
    if need_v and deform:
        grad_v = gv_acc.to(value.dtype)
    elif need_v:
        grad_v = torch.empty_like(value)
        keep = ('C', 'G', 'NSEG', 'SEG', 'SEG_PAD', 'SPB', 'CG', 'K', 'S', 'P', 'D', 'CLAMP',
                'SOFTMAX', 'STATIC', 'ACC', 'BLOCK')
        _launch(_bwd_values, grid_p, value.device, weight, lse, grad_out, grad_v, height,
                width, out_h, out_w, FOLD=bool(fold), **{key: meta[key] for key in keep})
    grad_w = None
    if need_w:
        tail = (kk, kk) if fold else (kk,)
        if static:
            gw = gw.sum(0).view(groups, nseg // groups, *tail).sum(1)
            if softmax:  # A is the same at every cell: the softmax backward of the sums
                attn = weight.to(acc).softmax(-1)
                gw = attn * (gw - (gw * attn).sum(-1, keepdim=True))
        else:
            gw = gw.view(batch, out_h, out_w, groups, nseg // groups, *tail).sum(4)
        grad_w = gw.to(weight.dtype)
    grad_off = None
    if need_off:
        grad_off = goff.view(batch, out_h, out_w, off_groups, nseg // off_groups, kk,
                             2).sum(4).to(offset.dtype)
    return grad_v, grad_w, grad_off


def local_aggregate_triton(value: torch.Tensor, weight: torch.Tensor, geom: Geometry,
                           groups: int, offset: torch.Tensor | None, normalize: str | None,
                           fold: bool, static: bool) -> torch.Tensor:
    """``impl='triton'`` of :func:`~mmvolo.ops.local_aggregate.local_aggregate` (the
    registry's signature; arguments already checked)."""
    if not HAS_TRITON:
        raise RuntimeError(f'local_aggregate_triton: {TRITON_MISSING}')
    off = value.new_empty(0) if offset is None else offset.contiguous()
    off_groups = 0 if offset is None else int(offset.shape[3])
    out, _ = _triton_op(value.contiguous(), weight.contiguous(), off, geom.kernel_size,
                        geom.stride, geom.padding, geom.dilation,
                        int(geom.boundary == 'clamp'), geom.out_h, geom.out_w, groups,
                        off_groups, int(normalize == 'softmax'), int(fold), int(static))
    return out


def triton_supports(value: torch.Tensor, weight: torch.Tensor) -> str | None:
    """None when the 'triton' impl can run on these tensors, else why not."""
    return unsupported_reason(value, weight, ('value', 'weight'), SUPPORTED_DTYPES, INTERPRETED)


if HAS_TRITON:
    _triton_op = define_op('mmvolo::local_aggregate_triton', triton_forward, triton_backward,
                           num_inputs=3, fake=_forward_fake)
    LOCAL_AGGREGATE_IMPLS.register('triton', triton_supports, PRIORITY)(local_aggregate_triton)
else:  # pragma: no cover - exercised only without triton
    LOCAL_AGGREGATE_IMPLS.register_unavailable('triton', TRITON_MISSING, PRIORITY)

__all__ = ['local_aggregate_triton', 'triton_forward', 'triton_backward', 'triton_supports',
           'plan']
