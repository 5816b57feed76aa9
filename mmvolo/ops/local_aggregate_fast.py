"""CPU fast path of :func:`~mmvolo.ops.local_aggregate.local_aggregate` (``impl='fast'``) and
of :func:`~mmvolo.ops.local_aggregate.local_similarity`.

The configurations a specialised kernel serves faster (depthwise conv, stride-1 dynamic
weights, outlook's fold) go to :mod:`.local_aggregate_kernels` (:func:`local_aggregate_fast`
picks); every other one runs the generic path here: one loop over the K*K taps per block
of output rows (:func:`.tiling.row_blocks`), never a Python loop over pixels. Per tap, a
*sampler* yields the block's samples (B, r, Wo, C):

* fixed windows, ``boundary='zeros'``: a strided slice (a view, no copy) of the value padded
  once with zeros so that every window is in range - position i*S - P + a*D is buffer row
  i*S + a*D;
* fixed windows, ``boundary='clamp'``: ``index_select`` of rows and columns by the clamped
  index tables (a block-sized copy);
* deformable (offsets): bilinear, four ``index_select`` s of the block's corners from the
  value flattened to (B*H*W*Go, C/Go) rows, corner weights zeroed outside the image.

Forward (non-fold): ``out[block].addcmul_(samples, A[..., k])`` per tap. Fold (outlook): the
block's K*K samples are copied into one (B, r, Wo, G, K*K, C/G) window tensor, ``A @ win``
gives Y, and each k_out slice of Y is added onto its positions (the sampler's transpose).
Blocks run one after another in one thread, so every sum has a fixed order: deterministic.

Forward and backward are one custom op (:func:`.custom_op.define_op`). The backward is
hand-written, recomputing the samples per block and tap (and the softmax) from the saved
value, weight and offsets; with g = grad_out and s_k the samples of tap k:

    grad_A[n, g, k]     = sum_{c in g} g[n, c] * s_k[n, c]
    grad_V             += transpose-sample of g * A[..., k]     (slice add_ / index_add_)
    grad_offset[n, k]   = sum_{c in go} (g * A)[n, c] * d s_k[n, c] / d(dy, dx)
    grad_weight         = A * (grad_A - sum_k grad_A * A)        (softmax), else grad_A

(fold: gY = the windows of g at the fixed positions, grad_A = gY @ win^T, grad_win = A^T @
gY sent back through the sampler - bilinear with offsets, which gives grad_offset.)
Memory: the output, one padded copy of value (zeros boundary), the gradients, and per block
the samples of one tap (fold: the K*K window tensors of one block). fp16/bf16 are computed in
fp32, fp32/fp64 in themselves.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from .custom_op import define_op
from .local_aggregate import NORMALIZE, Geometry, geometry_of, similarity_mask
from .local_aggregate_kernels import (
    KERNELS,
    shifted_similarity,
    softmax_last,
    softmax_last_backward,
    special_kernel,
)
from .tiling import BLOCK_ENV_VAR, compute_dtype, row_blocks

#: Elements of the per-block working set of the deformable path (its blocks are not
#: clamped to MAX_BLOCKS: per tap it runs large gathers, whose fixed cost is small).
DEFORM_BLOCK_ELEMS = 1 << 19


def blocks_of(geom: Geometry, elems_per_pixel: int,
              target: int | None = None) -> list[tuple[int, int]]:
    """Blocks of output rows sized by the working set per output pixel: as
    :func:`.tiling.row_blocks` (which $MMVOLO_WINDOW_BLOCK_ELEMS overrides), or
    about ``target`` elements each when given (the override still wins)."""
    per_pixel = max(elems_per_pixel, 1)
    if target is None or os.environ.get(BLOCK_ENV_VAR):
        meta = torch.empty(geom.batch, geom.out_h, geom.out_w, per_pixel, device='meta')
        return row_blocks(meta)
    rows = max(1, min(geom.out_h, target // max(geom.batch * geom.out_w * per_pixel, 1)))
    return [(r0, min(r0 + rows, geom.out_h)) for r0 in range(0, geom.out_h, rows)]


class FixedSampler:
    """Samples of fixed windows: strided views of a zero-padded buffer, or clamped gathers."""

    def __init__(self, geom: Geometry) -> None:
        self.geom = geom
        g = geom
        if g.boundary == 'zeros':
            span = g.dilation * (g.kernel_size - 1)
            need_h = (g.out_h - 1) * g.stride + span + 1
            need_w = (g.out_w - 1) * g.stride + span + 1
            self.pads = (g.padding, max(0, need_h - g.padding - g.height),
                         g.padding, max(0, need_w - g.padding - g.width))
        else:
            self.rows, _ = g.tap_index('h')
            self.cols, _ = g.tap_index('w')

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The buffer samples are read from: x padded (zeros) or x itself (clamp)."""
        if self.geom.boundary != 'zeros':
            return x.contiguous()
        top, bottom, left, right = self.pads
        return F.pad(x, (0, 0, left, right, top, bottom))

    def new_grad(self, like: torch.Tensor) -> torch.Tensor:
        """A zero buffer shaped like ``prepare``'s result."""
        g = self.geom
        if g.boundary != 'zeros':
            return like.new_zeros(g.batch, g.height, g.width, like.shape[-1])
        top, bottom, left, right = self.pads
        return like.new_zeros(g.batch, top + g.height + bottom, left + g.width + right,
                              like.shape[-1])

    def finish(self, buf: torch.Tensor) -> torch.Tensor:
        """The image part of a buffer, (B, H, W, C)."""
        g = self.geom
        if g.boundary != 'zeros':
            return buf
        return buf[:, g.padding:g.padding + g.height, g.padding:g.padding + g.width]

    def _slices(self, r0: int, r1: int, k: int) -> tuple[slice, slice]:
        g = self.geom
        a, b = divmod(k, g.kernel_size)
        rs = r0 * g.stride + a * g.dilation
        cs = b * g.dilation
        return (slice(rs, rs + (r1 - r0 - 1) * g.stride + 1, g.stride),
                slice(cs, cs + (g.out_w - 1) * g.stride + 1, g.stride))

    def _flat_index(self, r0: int, r1: int, k: int, device: torch.device) -> torch.Tensor:
        a, b = divmod(k, self.geom.kernel_size)
        return (self.rows[r0:r1, a][:, None] * self.geom.width
                + self.cols[:, b][None, :]).reshape(-1).to(device)

    def sample(self, buf: torch.Tensor, r0: int, r1: int, k: int) -> torch.Tensor:
        """(B, r, Wo, C): tap k of output rows [r0, r1)."""
        if self.geom.boundary == 'zeros':
            rows, cols = self._slices(r0, r1, k)
            return buf[:, rows, cols]
        a, b = divmod(k, self.geom.kernel_size)
        return buf.index_select(1, self.rows[r0:r1, a].to(buf.device)).index_select(
            2, self.cols[:, b].to(buf.device))

    def scatter(self, buf: torch.Tensor, r0: int, r1: int, k: int, val: torch.Tensor) -> None:
        """Add ``val`` (B, r, Wo, C) or (B, r, Wo, G, C/G) onto tap k's positions in ``buf``."""
        if self.geom.boundary == 'zeros':
            rows, cols = self._slices(r0, r1, k)
            target = buf[:, rows, cols]
            if val.dim() == 5:
                target = target.unflatten(-1, val.shape[-2:])
            target.add_(val)
            return
        batch, channels = buf.shape[0], buf.shape[-1]
        buf.view(batch, -1, channels).index_add_(1, self._flat_index(r0, r1, k, buf.device),
                                                 val.reshape(batch, -1, channels))


class DeformSampler:
    """Bilinear samples at the fixed window positions plus offsets (zeros outside)."""

    def __init__(self, geom: Geometry, offset: torch.Tensor) -> None:
        self.geom = geom
        self.offset = offset  # (B, Ho, Wo, Go, K*K, 2), compute dtype
        self.groups = offset.shape[3]
        rows, _ = geom.tap_index('h')
        cols, _ = geom.tap_index('w')
        self.rows = rows.to(offset.device, offset.dtype)
        self.cols = cols.to(offset.device, offset.dtype)
        dev = offset.device
        self.bidx = torch.arange(geom.batch, device=dev).view(-1, 1, 1, 1)
        self.gidx = torch.arange(self.groups, device=dev)
        self._buffers: dict = {}
        self._block: tuple[int, int] | None = None
        self._corners: list = []

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of C/Go channels: (B*H*W*Go, C/Go)."""
        return x.contiguous().view(-1, x.shape[-1] // self.groups)

    def finish(self, flat: torch.Tensor) -> torch.Tensor:
        g = self.geom
        return flat.view(g.batch, g.height, g.width, g.channels)

    def corners(self, r0: int, r1: int, k: int) -> list:
        """[(flat index (N,), w, dw/dy, dw/dx)] for the 4 corners of tap k, each weight
        (B, r, Wo, Go); computed for all K*K taps of the block at once (tap-major, so a
        tap's slice is contiguous) and kept until the block changes: the per-element ops
        on these small tensors are then K*K times fewer."""
        if self._block != (r0, r1):
            self._block, self._corners = (r0, r1), self._block_corners(r0, r1)
        return [tuple(t[k] for t in corner) for corner in self._corners]

    def _block_corners(self, r0: int, r1: int) -> list:
        g = self.geom
        kk = g.taps
        taps = torch.arange(kk)
        off = self.offset[:, r0:r1].movedim(4, 0)  # (K*K, B, r, Wo, Go, 2)
        rows = self.rows[r0:r1][:, taps // g.kernel_size].t()  # (K*K, r)
        cols = self.cols[:, taps % g.kernel_size].t()  # (K*K, Wo)
        py = rows[:, None, :, None, None] + off[..., 0]
        px = cols[:, None, None, :, None] + off[..., 1]
        y0, x0 = py.floor(), px.floor()
        ly, lx = py - y0, px - x0
        hy, hx = 1 - ly, 1 - lx
        bidx = self.bidx.view(1, -1, 1, 1, 1)
        out = []
        for dy, wy, dwy_sign in ((0, hy, -1), (1, ly, 1)):
            for dx, wx, dwx_sign in ((0, hx, -1), (1, lx, 1)):
                cy, cx = y0 + dy, x0 + dx
                inside = ((cy >= 0) & (cy < g.height) & (cx >= 0) & (cx < g.width)).to(py.dtype)
                yi = cy.clamp(0, g.height - 1).long()
                xi = cx.clamp(0, g.width - 1).long()
                idx = ((bidx * g.height + yi) * g.width + xi) * self.groups + self.gidx
                out.append((idx.reshape(kk, -1), wy * wx * inside, dwy_sign * wx * inside,
                            dwx_sign * wy * inside))
        return out

    def _scratch(self, name: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        """A buffer reused across taps and blocks (fresh allocations of these block-sized
        tensors, 4 per tap, cost as much as the gathers: page faults)."""
        numel = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype:
            buf = self._buffers[name] = like.new_empty(numel)
        return buf[:numel].view(shape)

    def sample(self, flat: torch.Tensor, r0: int, r1: int, k: int) -> torch.Tensor:
        """(B, r, Wo, C) bilinear samples of tap k, in a scratch buffer valid until the
        next call."""
        shape = (self.geom.batch, r1 - r0, self.geom.out_w, self.groups, flat.shape[-1])
        acc = self._scratch('samples', shape, flat)
        vals = self._scratch('vals', (math.prod(shape[:-1]), shape[-1]), flat)
        for i, (idx, w, _, _) in enumerate(self.corners(r0, r1, k)):
            torch.index_select(flat, 0, idx, out=vals)
            if i == 0:
                torch.mul(vals.view(shape), w[..., None], out=acc)
            else:
                acc.addcmul_(vals.view(shape), w[..., None])
        return acc.view(*shape[:3], -1)

    def backward_tap(self, flat: torch.Tensor, grad_flat: torch.Tensor | None,
                     grad_offset: torch.Tensor | None, r0: int, r1: int, k: int,
                     gs: torch.Tensor, need_samples: bool) -> torch.Tensor | None:
        """Scatter gs (B, r, Wo, C) = d loss / d samples into grad_flat, accumulate the
        offset gradient of tap k; return the samples when ``need_samples`` (in a scratch
        buffer, valid until the next call)."""
        shape = (self.geom.batch, r1 - r0, self.geom.out_w, self.groups, flat.shape[-1])
        rows = math.prod(shape[:-1])
        gs = gs.reshape(shape)
        vals = self._scratch('vals', (rows, shape[-1]), flat).view(shape)
        prod = self._scratch('prod', shape, flat)
        samples = self._scratch('samples', shape, flat) if need_samples else None
        gy = gx = None
        for i, (idx, w, dwy, dwx) in enumerate(self.corners(r0, r1, k)):
            if grad_flat is not None:
                torch.mul(gs, w[..., None], out=prod)
                grad_flat.index_add_(0, idx, prod.view(rows, -1))
            if grad_offset is None and not need_samples:
                continue
            torch.index_select(flat, 0, idx, out=vals.view(rows, -1))
            if grad_offset is not None:
                torch.mul(gs, vals, out=prod)
                dot = prod.sum(-1)
                gy = dot * dwy if gy is None else gy.addcmul_(dot, dwy)
                gx = dot * dwx if gx is None else gx.addcmul_(dot, dwx)
            if need_samples:
                if i == 0:
                    torch.mul(vals, w[..., None], out=samples)
                else:
                    samples.addcmul_(vals, w[..., None])
        if grad_offset is not None:
            grad_offset[:, r0:r1, :, :, k, 0] = gy
            grad_offset[:, r0:r1, :, :, k, 1] = gx
        return None if samples is None else samples.view(*shape[:3], -1)


def _corner_cache_elems(geom: Geometry, offset: torch.Tensor | None) -> int:
    """4-byte words per output pixel of DeformSampler's corner cache: 4 corners x K*K taps x
    Go groups x (an int64 index + 3 weights); 0 without offsets. (int32 indices would halve
    the index part, but make ``index_add_`` 3x slower on CPU.)"""
    return 0 if offset is None else 20 * geom.taps * offset.shape[3]


def _weight_tap(attn: torch.Tensor, static: bool, r0: int, r1: int, k: int) -> torch.Tensor:
    """A[..., k] of output rows [r0, r1) as (B, r, Wo, G, 1); static weights come per
    channel (K*K, C) (:func:`_per_channel_taps`), so tap k is the vector (C,)."""
    return attn[k] if static else attn[:, r0:r1, :, :, k, None]


def _per_channel_taps(attn: torch.Tensor, channels: int) -> torch.Tensor:
    """Static (G, K*K) -> (K*K, C): per-tap weight vectors along the contiguous channels
    (a (G, 1)-shaped broadcast runs one channel at a time when C/G is small: 30x slower
    for depthwise conv)."""
    return attn.repeat_interleave(channels // attn.shape[0], dim=0).t().contiguous()


def _weight_block(attn: torch.Tensor, static: bool, r0: int, r1: int) -> torch.Tensor:
    return attn if static else attn[:, r0:r1]


def _sampler(geom: Geometry, offset: torch.Tensor | None):
    return FixedSampler(geom) if offset is None else DeformSampler(geom, offset)


def aggregate_forward(value: torch.Tensor, attn: torch.Tensor, offset: torch.Tensor | None,
                      geom: Geometry, groups: int, fold: bool, static: bool) -> torch.Tensor:
    """Forward in the compute dtype of its (already cast) inputs; see the module docstring."""
    sampler = _sampler(geom, offset)
    src = sampler.prepare(value)
    split = (groups, geom.channels // groups)
    kk = geom.taps
    if not fold:
        out = value.new_zeros(geom.batch, geom.out_h, geom.out_w, *split)
        if static:
            attn, out = _per_channel_taps(attn, geom.channels), out.flatten(-2)
        deform = offset is not None
        blocks = blocks_of(geom, geom.channels * 4 + _corner_cache_elems(geom, offset),
                           DEFORM_BLOCK_ELEMS) if deform else blocks_of(geom, geom.channels)
        for r0, r1 in blocks:
            block = out[:, r0:r1]
            for k in range(kk):
                s = sampler.sample(src, r0, r1, k)
                s = s if static else s.unflatten(-1, split)
                block.addcmul_(s, _weight_tap(attn, static, r0, r1, k))
        return out if static else out.flatten(-2)
    fixed = sampler if offset is None else FixedSampler(geom)  # fold: fixed positions
    out = fixed.new_grad(value)
    for r0, r1 in blocks_of(geom, geom.channels * kk * 2 + _corner_cache_elems(geom, offset)):
        win = _windows(sampler, src, r0, r1, split, kk)
        y = torch.matmul(_weight_block(attn, static, r0, r1), win)
        for k in range(kk):
            fixed.scatter(out, r0, r1, k, y[..., k, :])
    return fixed.finish(out)


def _windows(sampler: FixedSampler | DeformSampler, src: torch.Tensor, r0: int, r1: int,
             split: tuple[int, int], kk: int) -> torch.Tensor:
    """(B, r, Wo, G, K*K, C/G): the K*K samples of rows [r0, r1)."""
    g = sampler.geom
    win = src.new_empty(g.batch, r1 - r0, g.out_w, split[0], kk, split[1])
    for k in range(kk):
        win[..., k, :] = sampler.sample(src, r0, r1, k).unflatten(-1, split)
    return win


def aggregate_backward(grad_out: torch.Tensor, value: torch.Tensor, attn: torch.Tensor,
                       offset: torch.Tensor | None, geom: Geometry, groups: int, fold: bool,
                       static: bool, needs: tuple[bool, bool, bool]) -> tuple:
    """(grad_value, grad_attn, grad_offset), None where ``needs`` says not wanted."""
    need_v, need_w, need_off = needs
    need_off = need_off and offset is not None
    sampler = _sampler(geom, offset)
    src = sampler.prepare(value)
    split = (groups, geom.channels // groups)
    kk = geom.taps
    grad_attn = attn.new_zeros(attn.shape) if need_w else None
    if fold:
        return _fold_backward(grad_out, src, attn, offset, sampler, geom, split, static,
                              (need_v, need_w, need_off))
    g_all = grad_out if static else grad_out.unflatten(-1, split)
    if static:  # per-channel taps (K*K, C), their gradient reduced to (G, K*K) at the end
        static_shape, attn = attn.shape, _per_channel_taps(attn, geom.channels)
        grad_attn = attn.new_zeros(attn.shape) if need_w else None
    deform = offset is not None
    grad_buf, grad_off = _grad_buffers(sampler, src, offset, need_v, need_off)
    blocks = blocks_of(geom, geom.channels * 6 + _corner_cache_elems(geom, offset),
                       DEFORM_BLOCK_ELEMS) if deform else blocks_of(geom, geom.channels * 2)
    for r0, r1 in blocks:
        g = g_all[:, r0:r1]
        for k in range(kk):
            w = _weight_tap(attn, static, r0, r1, k)
            gs = g * w if (need_v or need_off) else None
            if deform:
                if gs is not None:
                    s = sampler.backward_tap(src, grad_buf, grad_off, r0, r1, k, gs, need_w)
                else:
                    s = sampler.sample(src, r0, r1, k) if need_w else None
            else:
                s = sampler.sample(src, r0, r1, k) if need_w else None
                if need_v:
                    sampler.scatter(grad_buf, r0, r1, k, gs)
            if need_w:
                if static:
                    grad_attn[k] += (g * s).sum(dim=(0, 1, 2))
                else:
                    grad_attn[:, r0:r1, :, :, k] = (g * s.unflatten(-1, split)).sum(-1)
    if static and need_w:
        grad_attn = grad_attn.t().reshape(static_shape[0], -1, kk).sum(1)
    grad_v = None if grad_buf is None else sampler.finish(grad_buf)
    return grad_v, grad_attn, grad_off


def _grad_buffers(sampler: FixedSampler | DeformSampler, src: torch.Tensor,
                  offset: torch.Tensor | None, need_v: bool, need_off: bool) -> tuple:
    """Zero gradient buffers (None where not wanted): of the sampled source (``src``'s layout,
    the fixed sampler's padded one) and of the offsets (None without offsets)."""
    if offset is None:
        return (sampler.new_grad(src) if need_v else None), None
    return (torch.zeros_like(src) if need_v else None,
            offset.new_zeros(offset.shape) if need_off else None)


def _fold_backward(grad_out: torch.Tensor, src: torch.Tensor, attn: torch.Tensor,
                   offset: torch.Tensor | None, sampler: FixedSampler | DeformSampler,
                   geom: Geometry, split: tuple[int, int], static: bool,
                   needs: tuple[bool, bool, bool]) -> tuple:
    """Fold's backward: gY = the windows of grad_out at the fixed positions, grad_A = gY @
    win^T, grad_win = A^T @ gY sent back through the sampler (bilinear with offsets, which
    also yields the offset gradient)."""
    need_v, need_w, need_off = needs
    kk = geom.taps
    deform = offset is not None
    fixed = FixedSampler(geom) if deform else sampler
    grad_attn = attn.new_zeros(attn.shape) if need_w else None
    grad_buf, grad_off = _grad_buffers(sampler, src, offset, need_v, need_off)
    gsrc = fixed.prepare(grad_out)
    for r0, r1 in blocks_of(geom, geom.channels * kk * 4 + _corner_cache_elems(geom, offset)):
        gy = _windows(fixed, gsrc, r0, r1, split, kk)
        if need_w:
            win = _windows(sampler, src, r0, r1, split, kk)
            ga = torch.matmul(gy, win.transpose(-1, -2))
            if static:
                grad_attn += ga.sum(dim=(0, 1, 2))
            else:
                grad_attn[:, r0:r1] = ga
        if not (need_v or grad_off is not None):
            continue
        gwin = torch.matmul(_weight_block(attn, static, r0, r1).transpose(-1, -2), gy)
        for k in range(kk):
            if deform:
                sampler.backward_tap(src, grad_buf, grad_off, r0, r1, k,
                                     gwin[..., k, :].flatten(-2), need_samples=False)
            else:
                sampler.scatter(grad_buf, r0, r1, k, gwin[..., k, :])
    grad_v = None if grad_buf is None else sampler.finish(grad_buf)
    return grad_v, grad_attn, grad_off


def _aggregate_inputs(value: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor,
                      normalize: int) -> tuple:
    """(value, A, offset or None) in the compute dtype; A = softmax(weight) or weight."""
    dtype = compute_dtype(value.dtype)
    attn = weight.to(dtype)
    if normalize:
        attn = softmax_last(attn)
    off = offset.to(dtype) if offset.numel() else None
    return value.to(dtype), attn, off


def _aggregate_forward_op(value: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor,
                          kernel_size: int, stride: int, padding: int, dilation: int,
                          boundary: int, groups: int, normalize: int, fold: int,
                          static: int) -> torch.Tensor:
    """The generic forward as a custom op (``offset``: an empty tensor for none)."""
    geom = geometry_of(value.shape, kernel_size, stride, padding, dilation, boundary)
    v, attn, off = _aggregate_inputs(value, weight, offset, normalize)
    out = aggregate_forward(v, attn, off, geom, groups, bool(fold), bool(static))
    return _plain(out.to(value.dtype))


def _plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a tensor of its own (the image part of a padded buffer is a view: custom ops
    return contiguous tensors at storage offset 0, as their fake kernels say)."""
    return t if t.is_contiguous() and t.storage_offset() == 0 else t.clone(
        memory_format=torch.contiguous_format)


def _aggregate_backward_op(grad_out: torch.Tensor, value: torch.Tensor, weight: torch.Tensor,
                           offset: torch.Tensor, kernel_size: int, stride: int, padding: int,
                           dilation: int, boundary: int, groups: int, normalize: int,
                           fold: int, static: int, needs: tuple[bool, ...]) -> tuple:
    geom = geometry_of(value.shape, kernel_size, stride, padding, dilation, boundary)
    v, attn, off = _aggregate_inputs(value, weight, offset, normalize)
    grad_v, grad_a, grad_off = aggregate_backward(
        grad_out.to(v.dtype), v, attn, off, geom, groups, bool(fold), bool(static),
        tuple(needs))
    if grad_a is not None and normalize:
        grad_a = softmax_last_backward(grad_a, attn)
    return tuple(None if t is None else _plain(t.to(ref.dtype))
                 for t, ref in ((grad_v, value), (grad_a, weight), (grad_off, offset)))


def _aggregate_fake(value: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor,
                    kernel_size: int, stride: int, padding: int, dilation: int, boundary: int,
                    groups: int, normalize: int, fold: int, static: int) -> torch.Tensor:
    if fold:
        return value.new_empty(value.shape)
    geom = geometry_of(value.shape, kernel_size, stride, padding, dilation, boundary)
    return value.new_empty((geom.batch, geom.out_h, geom.out_w, geom.channels))


#: The generic path as a differentiable custom op (:func:`~mmvolo.ops.custom_op.define_op`):
#: saves value, weight and offset; the backward recomputes samples (and the softmax).
_aggregate_op = define_op('mmvolo::local_aggregate_fast', _aggregate_forward_op,
                          _aggregate_backward_op, num_inputs=3, fake=_aggregate_fake)


def local_aggregate_fast(value: torch.Tensor, weight: torch.Tensor, geom: Geometry,
                         groups: int, offset: torch.Tensor | None, normalize: str | None,
                         fold: bool, static: bool) -> torch.Tensor:
    """``impl='fast'`` of :func:`~mmvolo.ops.local_aggregate.local_aggregate`: the
    specialised kernel of this configuration (:mod:`.local_aggregate_kernels`), else the
    generic block loop."""
    kernel = special_kernel(geom, offset, normalize, fold, static)
    if kernel is not None:
        return KERNELS[kernel](value, weight, geom, groups, normalize)
    off = value.new_empty(0) if offset is None else offset
    return _aggregate_op(value, weight, off, *geom.params, groups, NORMALIZE.index(normalize),
                         int(fold), int(static))


# ------------------------------------------------------------------------------------------
# local_similarity
# ------------------------------------------------------------------------------------------

def _similarity_forward_op(query: torch.Tensor, key: torch.Tensor, kernel_size: int,
                           dilation: int, boundary: int, groups: int) -> torch.Tensor:
    """logits[p, g, k] = q[p, g] . key[pos(p, k), g] (-inf outside the image for 'zeros')."""
    geom = _similarity_geometry(key, kernel_size, dilation, boundary)
    dtype = compute_dtype(query.dtype)
    split = (groups, geom.channels // groups)
    sampler = FixedSampler(geom)
    src = sampler.prepare(key.to(dtype))
    q = query.to(dtype).unflatten(-1, split)
    logits = q.new_empty(geom.batch, geom.out_h, geom.out_w, groups, geom.taps)
    for r0, r1 in blocks_of(geom, geom.channels * 2):
        qb = q[:, r0:r1]
        for k in range(geom.taps):
            s = sampler.sample(src, r0, r1, k).unflatten(-1, split)
            torch.sum(qb * s, dim=-1, out=logits[:, r0:r1, :, :, k])
    if geom.boundary == 'zeros':
        logits.masked_fill_(~similarity_mask(geom).to(logits.device), float('-inf'))
    return logits.to(query.dtype)


def _similarity_backward_op(grad: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                            kernel_size: int, dilation: int, boundary: int, groups: int,
                            needs: tuple[bool, ...]) -> tuple:
    geom = _similarity_geometry(key, kernel_size, dilation, boundary)
    dtype = compute_dtype(query.dtype)
    split = (groups, geom.channels // groups)
    sampler = FixedSampler(geom)
    src = sampler.prepare(key.to(dtype))
    q = query.to(dtype).unflatten(-1, split)
    gl = grad.to(dtype, copy=True)
    if geom.boundary == 'zeros':
        gl.masked_fill_(~similarity_mask(geom).to(gl.device), 0.0)
    need_q, need_k = needs[:2]
    grad_q = torch.zeros_like(q) if need_q else None
    grad_k = sampler.new_grad(src) if need_k else None
    for r0, r1 in blocks_of(geom, geom.channels * 3):
        qb = q[:, r0:r1]
        for k in range(geom.taps):
            glk = gl[:, r0:r1, :, :, k, None]
            if need_q:
                s = sampler.sample(src, r0, r1, k).unflatten(-1, split)
                grad_q[:, r0:r1].addcmul_(glk, s)
            if need_k:
                sampler.scatter(grad_k, r0, r1, k, glk * qb)
    grad_q = None if grad_q is None else grad_q.flatten(-2).to(query.dtype)
    grad_k = None if grad_k is None else _plain(sampler.finish(grad_k).to(key.dtype))
    return grad_q, grad_k


def _similarity_geometry(key: torch.Tensor, kernel_size: int, dilation: int,
                         boundary: int) -> Geometry:
    return geometry_of(key.shape, kernel_size, 1, dilation * (kernel_size // 2), dilation,
                       boundary)


def _similarity_fake(query: torch.Tensor, key: torch.Tensor, kernel_size: int, dilation: int,
                     boundary: int, groups: int) -> torch.Tensor:
    return query.new_empty((*query.shape[:3], groups, kernel_size * kernel_size))


_similarity_op = define_op('mmvolo::local_similarity_fast', _similarity_forward_op,
                           _similarity_backward_op, num_inputs=2, fake=_similarity_fake)


def local_similarity_fast(query: torch.Tensor, key: torch.Tensor, geom: Geometry,
                          groups: int, scale: float) -> torch.Tensor:
    """``impl='fast'`` of :func:`~mmvolo.ops.local_aggregate.local_similarity`: the shifted
    kernel (:mod:`.local_aggregate_kernels`) for 'zeros', the generic loop for 'clamp'; the
    scale applied to the query, so the custom ops' parameters stay ints."""
    if scale != 1.0:
        query = query * scale
    if geom.boundary == 'zeros':
        return shifted_similarity(query, key, geom, groups)
    return _similarity_op(query, key, geom.kernel_size, geom.dilation, geom.params[4], groups)


__all__ = ['local_aggregate_fast', 'local_similarity_fast', 'aggregate_forward',
           'aggregate_backward', 'FixedSampler', 'DeformSampler']
