"""Specialised CPU kernels behind ``local_aggregate(impl='fast')`` for the configurations the
generic block loop (:mod:`.local_aggregate_fast`) serves slower; :func:`special_kernel`
is the rule that picks one (none: the generic loop runs):

* ``'conv'`` - static weights, no offsets, no fold, zeros boundary (depthwise convolution,
  any K, S, P, D, G): ``F.conv2d(groups=C)`` on the channels-last view of value, with the
  per-channel kernel ``A.repeat_interleave(C/G)`` (``A = softmax(weight)`` or ``weight``);
  autograd differentiates it.
* ``'shifted'`` - dynamic weights, no offsets, no fold, zeros boundary, stride 1
  (involution, SASA's aggregation): per block of output rows and tap k, one in-place
  ``addcmul_`` of the rectangle of pixels whose tap lies inside the image
  (:meth:`~.local_aggregate.Geometry.tap_slices`; no padded copy, no unfold); a custom op
  saving value and weight, whose backward recomputes per tap

      grad_V[pos(n, k)]  += A[n, g, k] * grad_out[n]
      grad_A[n, g, k]     = sum_{c in g} grad_out[n, c] * V[pos(n, k), c]

  (then the softmax backward for ``normalize='softmax'``).
* :func:`attend_shifted` - the SASA composition ``local_aggregate(v, local_similarity(q,
  k) + bias, normalize='softmax')`` (stride 1, zeros boundary, a separable per-query bias)
  fused into one pass per row block (no logits round trip between two ops), for
  :func:`~mmvolo.ops.local_attention`.
  :func:`shifted_similarity` is ``local_similarity``'s kernel for 'zeros' (the same
  tap rectangles, a tap-major logit buffer).
* ``'chunked'`` - dynamic weights, ``normalize='softmax'``, ``fold=True``, no offsets,
  dilation 1, the grid ceil(H/S) x ceil(W/S) (outlook attention): outlook's chunked kernel
  (:mod:`.outlook_chunked`, worker threads and per-chunk recompute).

fp16/bf16 are computed in fp32 (``'conv'``: in the input dtype, as ``F.conv2d`` does).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .custom_op import define_op
from .local_aggregate import Geometry, geometry_of
from .tiling import compute_dtype, row_blocks

Kernel = Callable[..., torch.Tensor]


def special_kernel(geom: Geometry, offset: torch.Tensor | None, normalize: str | None,
                   fold: bool, static: bool) -> str | None:
    """The name of the specialised kernel for this configuration, or None (generic)."""
    if offset is not None or geom.boundary != 'zeros':
        return None
    if fold:
        ceil_grid = (geom.out_h, geom.out_w) == (math.ceil(geom.height / geom.stride),
                                                 math.ceil(geom.width / geom.stride))
        if not static and normalize == 'softmax' and geom.dilation == 1 and ceil_grid:
            return 'chunked'
        return None
    if static:
        return 'conv'
    return 'shifted' if geom.stride == 1 else None


def softmax_last(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last dim from elementwise ops (``Tensor.softmax`` on CPU is
    ~20x slower when that dim is this short: it vectorizes along it)."""
    e = (x - x.amax(dim=-1, keepdim=True)).exp_()
    return e.div_(e.sum(dim=-1, keepdim=True))


def softmax_last_backward(grad: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """d loss / d logits from d loss / d attn (in place on ``grad``)."""
    return grad.sub_((grad * attn).sum(dim=-1, keepdim=True)).mul_(attn)


def dot_last_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                  scratch: torch.Tensor) -> None:
    """``out[...] = (a * b).sum(-1)``, the product written into ``scratch`` (a buffer at least
    as large as ``a`` in every dim, reused across the taps of one call): a fresh product per
    tap is new pages above the allocator's mmap threshold, whose faults cost more than the
    arithmetic at D1 stage-1 sizes."""
    product = scratch[tuple(slice(0, size) for size in a.shape)]
    torch.mul(a, b, out=product)
    torch.sum(product, dim=-1, out=out)


# ------------------------------------------------------------------------------------------
# 'conv'
# ------------------------------------------------------------------------------------------

def conv_kernel(value: torch.Tensor, weight: torch.Tensor, geom: Geometry, groups: int,
                normalize: str | None) -> torch.Tensor:
    """Static weights (G, K*K) as a depthwise ``F.conv2d``; (B, Ho, Wo, C)."""
    channels, size = geom.channels, geom.kernel_size
    attn = weight.softmax(dim=-1) if normalize == 'softmax' else weight
    if groups != channels:
        attn = attn.repeat_interleave(channels // groups, dim=0)
    out = F.conv2d(value.permute(0, 3, 1, 2), attn.to(value.dtype).view(channels, 1, size, size),
                   stride=geom.stride, padding=geom.padding, dilation=geom.dilation,
                   groups=channels)
    return out.permute(0, 2, 3, 1)


# ------------------------------------------------------------------------------------------
# 'shifted'
# ------------------------------------------------------------------------------------------

def _shifted_inputs(value: torch.Tensor, weight: torch.Tensor, geom: Geometry, groups: int,
                    normalize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """value (B, H, W, G, C/G) and A (B, Ho, Wo, G, K*K) in the compute dtype."""
    dtype = compute_dtype(value.dtype)
    xg = value.to(dtype).unflatten(-1, (groups, geom.channels // groups))
    attn = weight.to(dtype)
    return xg, softmax_last(attn) if normalize else attn


def softmax_first_(x: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 0 (the taps of a tap-major tensor), in place: reductions over a
    leading dim vectorise along the contiguous rest."""
    x.sub_(x.amax(dim=0, keepdim=True)).exp_()
    return x.div_(x.sum(dim=0, keepdim=True))


def shifted_forward(value: torch.Tensor, weight: torch.Tensor, kernel_size: int,
                    padding: int, dilation: int, groups: int, normalize: int) -> torch.Tensor:
    """(B, Ho, Wo, C): K*K in-place ``addcmul_`` on the taps' rectangles per row block."""
    geom = geometry_of(value.shape, kernel_size, 1, padding, dilation, 'zeros')
    xg, attn = _shifted_inputs(value, weight, geom, groups, normalize)
    out = xg.new_zeros(geom.batch, geom.out_h, geom.out_w, *xg.shape[-2:])
    for k, (rows, cols), (in_rows, in_cols) in geom.tap_windows(row_blocks(out.flatten(-2))):
        out[:, rows, cols].addcmul_(xg[:, in_rows, in_cols], attn[:, rows, cols, :, k:k + 1])
    return out.flatten(-2).to(value.dtype)


def shifted_backward(grad_out: torch.Tensor, value: torch.Tensor, weight: torch.Tensor,
                     kernel_size: int, padding: int, dilation: int, groups: int,
                     normalize: int, needs: tuple[bool, ...]) -> tuple:
    """(grad_value, grad_weight), None where ``needs`` says not wanted."""
    need_v, need_w = needs[:2]
    geom = geometry_of(value.shape, kernel_size, 1, padding, dilation, 'zeros')
    xg, attn = _shifted_inputs(value, weight, geom, groups, normalize)
    g = grad_out.to(xg.dtype).unflatten(-1, xg.shape[-2:])
    grad_x = xg.new_zeros(xg.shape) if need_v else None
    grad_a = attn.new_zeros(attn.shape) if need_w else None
    blocks = row_blocks(grad_out)
    scratch = xg.new_empty((geom.batch, max(stop - start for start, stop in blocks),
                            *g.shape[2:])) if need_w else None
    for k, (rows, cols), (in_rows, in_cols) in geom.tap_windows(blocks):
        g_k = g[:, rows, cols]
        if need_v:
            grad_x[:, in_rows, in_cols].addcmul_(g_k, attn[:, rows, cols, :, k:k + 1])
        if need_w:
            dot_last_into(grad_a[:, rows, cols, :, k], g_k, xg[:, in_rows, in_cols],
                          scratch)
    if grad_a is not None:
        if normalize:
            softmax_last_backward(grad_a, attn)
        grad_a = grad_a.to(weight.dtype)
    return None if grad_x is None else grad_x.flatten(-2).to(value.dtype), grad_a


def _shifted_fake(value: torch.Tensor, weight: torch.Tensor, kernel_size: int, padding: int,
                  dilation: int, groups: int, normalize: int) -> torch.Tensor:
    return value.new_empty((*weight.shape[:3], value.shape[-1]))


_shifted_op = define_op('mmvolo::local_aggregate_shifted', shifted_forward, shifted_backward,
                        num_inputs=2, fake=_shifted_fake)


def shifted_kernel(value: torch.Tensor, weight: torch.Tensor, geom: Geometry, groups: int,
                   normalize: str | None) -> torch.Tensor:
    """Dynamic weights (B, Ho, Wo, G, K*K), stride 1; (B, Ho, Wo, C)."""
    return _shifted_op(value.contiguous(), weight.contiguous(), geom.kernel_size, geom.padding,
                       geom.dilation, groups, int(normalize == 'softmax'))


def _similarity_inputs(query: torch.Tensor, key: torch.Tensor,
                       groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = compute_dtype(query.dtype)
    split = (groups, query.shape[-1] // groups)
    return query.to(dtype).unflatten(-1, split), key.to(dtype).unflatten(-1, split)


def _similarity_geometry(key: torch.Tensor, kernel_size: int, dilation: int) -> Geometry:
    return geometry_of(key.shape, kernel_size, 1, dilation * (kernel_size // 2), dilation,
                       'zeros')


def shifted_similarity_forward(query: torch.Tensor, key: torch.Tensor, kernel_size: int,
                               dilation: int, groups: int) -> torch.Tensor:
    """(B, H, W, G, K*K) logits q . key[pos(p, k)] (-inf for taps outside the image): per
    tap one dot product on its rectangle into a tap-major buffer filled with -inf."""
    geom = _similarity_geometry(key, kernel_size, dilation)
    qg, kg = _similarity_inputs(query, key, groups)
    logits = qg.new_full((geom.taps, *qg.shape[:-1]), float('-inf'))
    blocks = row_blocks(query)
    scratch = qg.new_empty((geom.batch, max(stop - start for start, stop in blocks),
                            *qg.shape[2:]))
    for k, (rows, cols), (in_rows, in_cols) in geom.tap_windows(blocks):
        dot_last_into(logits[k, :, rows, cols], qg[:, rows, cols], kg[:, in_rows, in_cols],
                      scratch)
    return logits.movedim(0, -1).to(query.dtype).contiguous()


def shifted_similarity_backward(grad: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                                kernel_size: int, dilation: int, groups: int,
                                needs: tuple[bool, ...]) -> tuple:
    """(grad_query, grad_key): grad_q[p] += gl[p, k] key[pos(p, k)], grad_key[pos(p, k)] +=
    gl[p, k] q[p] over the in-image taps (the -inf taps get no gradient)."""
    need_q, need_k = needs[:2]
    geom = _similarity_geometry(key, kernel_size, dilation)
    qg, kg = _similarity_inputs(query, key, groups)
    gl = grad.to(qg.dtype).movedim(-1, 0).contiguous()  # (K*K, B, H, W, G)
    grad_q = qg.new_zeros(qg.shape) if need_q else None
    grad_k = kg.new_zeros(kg.shape) if need_k else None
    for k, (rows, cols), (in_rows, in_cols) in geom.tap_windows(row_blocks(query)):
        glk = gl[k, :, rows, cols, :, None]
        if need_q:
            grad_q[:, rows, cols].addcmul_(glk, kg[:, in_rows, in_cols])
        if need_k:
            grad_k[:, in_rows, in_cols].addcmul_(glk, qg[:, rows, cols])
    return tuple(None if t is None else t.flatten(-2).to(ref.dtype)
                 for t, ref in ((grad_q, query), (grad_k, key)))


def _similarity_fake(query: torch.Tensor, key: torch.Tensor, kernel_size: int, dilation: int,
                     groups: int) -> torch.Tensor:
    return query.new_empty((*query.shape[:3], groups, kernel_size * kernel_size))


_similarity_op = define_op('mmvolo::local_similarity_shifted', shifted_similarity_forward,
                           shifted_similarity_backward, num_inputs=2, fake=_similarity_fake)


def shifted_similarity(query: torch.Tensor, key: torch.Tensor, geom: Geometry,
                       groups: int) -> torch.Tensor:
    """``local_similarity`` with ``boundary='zeros'`` (the scale already applied to q)."""
    return _similarity_op(query.contiguous(), key.contiguous(), geom.kernel_size,
                          geom.dilation, groups)


# ------------------------------------------------------------------------------------------
# similarity -> softmax -> aggregation, fused (SASA)
# ------------------------------------------------------------------------------------------

def attend_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_rows: torch.Tensor,
                   bias_cols: torch.Tensor, kernel_size: int, dilation: int,
                   groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, H, W, C), A tap-major (K*K, B, H, W, G)) per row block: the logits of the
    in-image taps by one dot product per tap (the rest stay -inf), plus the separable bias
    ``bias_rows[..., a] + bias_cols[..., b]`` ((B, H, W, G, K) each), the softmax over the
    taps, then one ``addcmul_`` of A * v per tap."""
    geom = _similarity_geometry(k, kernel_size, dilation)
    qg, kg = _similarity_inputs(q, k, groups)
    vg = v.to(qg.dtype).unflatten(-1, qg.shape[-2:])
    size = kernel_size
    b_rows = bias_rows.to(qg.dtype).movedim(-1, 0).contiguous()  # (K, B, H, W, G)
    b_cols = bias_cols.to(qg.dtype).movedim(-1, 0).contiguous()
    attn = qg.new_full((geom.taps, *qg.shape[:-1]), float('-inf'))
    out = vg.new_zeros(vg.shape)
    blocks = row_blocks(q)
    scratch = qg.new_empty((geom.batch, max(stop - start for start, stop in blocks),
                            *qg.shape[2:]))
    for r0, r1 in blocks:
        taps = list(geom.tap_windows([(r0, r1)]))
        for t, (rows, cols), (in_rows, in_cols) in taps:
            dot_last_into(attn[t, :, rows, cols], qg[:, rows, cols], kg[:, in_rows, in_cols],
                          scratch)
        logits = attn[:, :, r0:r1]
        grid = logits.unflatten(0, (size, size))  # tap (a, b); -inf stays -inf
        grid.add_(b_rows[:, None, :, r0:r1])
        grid.add_(b_cols[None, :, :, r0:r1])
        softmax_first_(logits)
        for t, (rows, cols), (in_rows, in_cols) in taps:
            out[:, rows, cols].addcmul_(attn[t, :, rows, cols, :, None], vg[:, in_rows, in_cols])
    return out.flatten(-2).to(v.dtype), attn


def attend_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor, bias_rows: torch.Tensor, bias_cols: torch.Tensor,
                    attn: torch.Tensor, kernel_size: int, dilation: int, groups: int,
                    needs: tuple[bool, ...]) -> tuple:
    """Gradients of (q, k, v, bias_rows, bias_cols) from the saved A; with g = grad_out:
    gA = g . v[pos], gL = A * (gA - sum_k gA * A), grad_q += gL k[pos], grad_k[pos] += gL q,
    grad_v[pos] += A g, grad_bias_rows[a] = sum_b gL[(a, b)] (cols likewise)."""
    geom = _similarity_geometry(k, kernel_size, dilation)
    qg, kg = _similarity_inputs(q, k, groups)
    vg = v.to(qg.dtype).unflatten(-1, qg.shape[-2:])
    g = grad_out.to(qg.dtype).unflatten(-1, qg.shape[-2:])
    need_q, need_k, need_v = needs[:3]
    grad_l = attn.new_zeros(attn.shape)
    grad_q = qg.new_zeros(qg.shape) if need_q else None
    grad_k = kg.new_zeros(kg.shape) if need_k else None
    grad_v = vg.new_zeros(vg.shape) if need_v else None
    blocks = row_blocks(q)
    scratch = qg.new_empty((geom.batch, max(stop - start for start, stop in blocks),
                            *qg.shape[2:]))
    for r0, r1 in blocks:
        taps = list(geom.tap_windows([(r0, r1)]))
        for t, (rows, cols), (in_rows, in_cols) in taps:
            g_t = g[:, rows, cols]
            dot_last_into(grad_l[t, :, rows, cols], g_t, vg[:, in_rows, in_cols], scratch)
            if need_v:
                grad_v[:, in_rows, in_cols].addcmul_(attn[t, :, rows, cols, :, None], g_t)
        gl, a = grad_l[:, :, r0:r1], attn[:, :, r0:r1]  # softmax backward (A = 0 off-image)
        gl.sub_((gl * a).sum(dim=0, keepdim=True)).mul_(a)
        for t, (rows, cols), (in_rows, in_cols) in taps:
            gl_t = grad_l[t, :, rows, cols, :, None]
            if need_q:
                grad_q[:, rows, cols].addcmul_(gl_t, kg[:, in_rows, in_cols])
            if need_k:
                grad_k[:, in_rows, in_cols].addcmul_(gl_t, qg[:, rows, cols])
    grid = grad_l.unflatten(0, (kernel_size, kernel_size))
    grad_rows = grid.sum(dim=1).movedim(0, -1).to(bias_rows.dtype) if needs[3] else None
    grad_cols = grid.sum(dim=0).movedim(0, -1).to(bias_cols.dtype) if needs[4] else None
    grads = [None if t is None else t.flatten(-2).to(ref.dtype)
             for t, ref in ((grad_q, q), (grad_k, k), (grad_v, v))]
    return (*grads, _contiguous(grad_rows), _contiguous(grad_cols))


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def _attend_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_rows: torch.Tensor,
                 bias_cols: torch.Tensor, kernel_size: int, dilation: int,
                 groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    attn = q.new_empty((kernel_size * kernel_size, *q.shape[:3], groups),
                       dtype=compute_dtype(q.dtype))
    return torch.empty_like(v, memory_format=torch.contiguous_format), attn


_attend_op = define_op('mmvolo::local_attend_shifted', attend_forward, attend_backward,
                       num_inputs=5, fake=_attend_fake)


def attend_shifted(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_rows: torch.Tensor,
                   bias_cols: torch.Tensor, kernel_size: int, dilation: int = 1,
                   groups: int = 1) -> torch.Tensor:
    """``local_aggregate(v, local_similarity(q, k, K, D, scale=1, groups=G) + bias,
    K, padding=D*(K//2), dilation=D, groups=G, normalize='softmax')`` in one pass per row
    block, with the separable bias ``bias[p, g, a*K + b] = bias_rows[p, g, a] +
    bias_cols[p, g, b]`` ((B, H, W, G, K) each; SASA's q . r): saves the weights A
    (K*K*G per pixel), not the logits' inputs twice."""
    tensors = (t.contiguous() for t in (q, k, v, bias_rows, bias_cols))
    return _attend_op(*tensors, kernel_size, dilation, groups)[0]


# ------------------------------------------------------------------------------------------
# 'chunked'
# ------------------------------------------------------------------------------------------

def chunked_kernel(value: torch.Tensor, weight: torch.Tensor, geom: Geometry, groups: int,
                   normalize: str | None) -> torch.Tensor:
    """Outlook's fold with softmax: (B, H, W, C) by :mod:`.outlook_chunked`'s kernel."""
    from .outlook_chunked import chunked_fold  # registers outlook's 'chunked'; imports this
    return chunked_fold(value, weight.flatten(3), groups, geom.kernel_size, geom.padding,
                        geom.stride)


KERNELS: dict[str, Kernel] = {'conv': conv_kernel, 'shifted': shifted_kernel,
                              'chunked': chunked_kernel}

__all__ = ['special_kernel', 'KERNELS', 'conv_kernel', 'shifted_kernel', 'chunked_kernel',
           'shifted_similarity', 'attend_shifted',
           'softmax_last', 'softmax_last_backward', 'dot_last_into']
