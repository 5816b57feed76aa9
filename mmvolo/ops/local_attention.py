"""Local self-attention with relative position embeddings (SASA: Ramachandran et al.,
"Stand-Alone Self-Attention in Vision Models", NeurIPS 2019) as one functional op with a
reference and a fast implementation.

Each pixel p attends over its KxK neighbourhood N(p) (offsets (a, b) in [0, K)^2, centred:
pixel p + (a - K//2, b - K//2)), per head of d = C/heads channels:

    logit[p, (a, b)] = q[p] . (k[p + (a, b) - K//2] + r[a, b])      for neighbours in the image
    attn[p]          = softmax over the neighbours inside the image
    out[p]           = sum_{(a, b)} attn[p, (a, b)] * v[p + (a, b) - K//2]

Neighbours outside the image are **masked out of the softmax** (logit -inf), not attended as
zero vectors (a zero key would still get the logit q . r and take probability mass), so a
pixel near the border attends over fewer positions; at a 1x1 image out = v. The relative
embedding is split as in the paper: r[a, b] = concat(rel_h[a], rel_w[b]), the first d/2
channels of every head get the row-offset embedding ``rel_h`` (K, d/2), the last d/2 the
column-offset embedding ``rel_w`` (K, d/2), shared by all heads. ``q`` comes pre-scaled (the
module multiplies it by d**-0.5), so the op applies no scale of its own.

* ``'reference'``: the formula with ``F.unfold`` of k and v into (B, heads, d, K*K, H*W), an
  unfolded validity mask and a softmax over K*K; it holds (and autograd saves) several
  K*K*C*H*W tensors.
* ``'fast'`` (``'auto'``): a :class:`torch.autograd.Function` looping over the K*K offsets on
  shifted slices (:mod:`.window_utils`): per offset, q . k on the valid rectangle into a
  (K*K, B, H, W, heads) logit buffer (initialised to -inf, so invalid offsets are masked by
  never being written), then q . rel (two small matmuls) added in place over the whole
  buffer (-inf stays -inf); then one softmax over the offsets and an in-place ``addcmul_``
  of attn * v per offset. It saves q, k, v, the embeddings and the attention
  weights (K*K*heads*H*W), nothing of size K*K*C*H*W; with g = grad_out, per offset:

      gA = g . v_shift ;  gL = attn * (gA - sum_k gA * attn)
      grad_q += gL * (k_shift + r) ;  grad_k_shift += gL * q ;  grad_v_shift += attn * g
      grad_rel_h[a] = sum_{p, heads, b} gL[p, (a, b)] q_row[p]   (grad_rel_w likewise)

  fp16/bf16 inputs are computed in fp32 (fp32/fp64 in themselves); it is once-differentiable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .custom_op import define_op
from .dispatch import ImplRegistry
from .window_utils import (
    check_kernel_size,
    check_tokens,
    compute_dtype,
    dot_last_into,
    row_blocks,
    window_mask,
    window_offsets,
)

OP = 'local_attention'


def check_local_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 rel_h: torch.Tensor, rel_w: torch.Tensor, num_heads: int,
                                 kernel_size: int) -> None:
    """One-line ValueError when the tensors, heads and K do not fit together."""
    for name, t in (('q', q), ('k', k), ('v', v)):
        check_tokens(OP, name, t)
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f'{OP}: q, k and v must have one shape (B, H, W, C); got '
                         f'{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}')
    check_kernel_size(OP, kernel_size)
    channels = q.shape[-1]
    if not isinstance(num_heads, int) or num_heads < 1 or channels % num_heads:
        raise ValueError(f'{OP}: channels {channels} must divide into num_heads={num_heads!r}')
    head_dim = channels // num_heads
    if head_dim % 2:
        raise ValueError(f'{OP}: head dim {head_dim} (= {channels} / {num_heads} heads) must '
                         f'be even: half gets row offsets, half column offsets')
    expected = (kernel_size, head_dim // 2)
    if tuple(rel_h.shape) != expected or tuple(rel_w.shape) != expected:
        raise ValueError(f'{OP}: rel_h and rel_w must be (K, head_dim/2) = {expected}; got '
                         f'{tuple(rel_h.shape)} and {tuple(rel_w.shape)}')


def relative_embedding(rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    """(K*K, d): row a*K + b is concat(rel_h[a], rel_w[b])."""
    size, half = rel_h.shape
    rows = rel_h[:, None, :].expand(size, size, half)
    cols = rel_w[None, :, :].expand(size, size, rel_w.shape[1])
    return torch.cat([rows, cols], dim=-1).reshape(size * size, -1)


def local_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              rel_h: torch.Tensor, rel_w: torch.Tensor, num_heads: int,
                              kernel_size: int = 7) -> torch.Tensor:
    """The formula with unfolded neighbourhoods and a masked softmax over K*K.

    Args:
        q: pre-scaled queries, (B, H, W, C).
        k, v: keys and values, (B, H, W, C).
        rel_h, rel_w: row / column offset embeddings, (K, d/2) each, d = C / num_heads.
        num_heads: heads.
        kernel_size: window K (odd).

    Returns:
        (B, H, W, C), dtype of q.
    """
    batch, height, width, channels = q.shape
    head_dim = channels // num_heads
    kk = kernel_size * kernel_size

    def unfold(t: torch.Tensor) -> torch.Tensor:
        t = F.unfold(t.permute(0, 3, 1, 2), kernel_size, padding=kernel_size // 2)
        return t.view(batch, num_heads, head_dim, kk, height * width)

    k_unf, v_unf = unfold(k), unfold(v)
    rel = relative_embedding(rel_h, rel_w).t()  # (d, K*K)
    qh = q.permute(0, 3, 1, 2).reshape(batch, num_heads, head_dim, 1, height * width)
    logits = (qh * (k_unf + rel[:, :, None])).sum(dim=2)  # (B, heads, K*K, H*W)
    inside = window_mask(height, width, kernel_size, q.device).view(height * width, kk).t()
    attn = logits.masked_fill(~inside, float('-inf')).softmax(dim=2)
    out = (attn[:, :, None] * v_unf).sum(dim=3)  # (B, heads, d, H*W)
    return out.reshape(batch, channels, height, width).permute(0, 2, 3, 1)


def _split_heads(t: torch.Tensor, num_heads: int, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).unflatten(-1, (num_heads, t.shape[-1] // num_heads))


def _softmax_first(x: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 0 (the K*K offsets), in place on ``x``: reductions over a leading dim
    vectorise along the contiguous rest (``Tensor.softmax`` over a short dim does not). No
    pixel has all offsets masked (-inf): the window centre is always inside the image."""
    x.sub_(x.amax(dim=0, keepdim=True)).exp_()
    return x.div_(x.sum(dim=0, keepdim=True))


def local_attention_fast_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 rel_h: torch.Tensor, rel_w: torch.Tensor, num_heads: int,
                                 kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, H, W, C), attn (K*K, B, H, W, heads)) without autograd bookkeeping.

    The logits and weights are offset-major, (K*K, B, H, W, heads), so that each offset's
    slice is one contiguous plane (written and read per offset) and the softmax reduces over
    the leading dim. Output rows are processed in blocks (:func:`row_blocks`).
    """
    batch, height, width, channels = q.shape
    dtype = compute_dtype(q.dtype)
    qh, kh, vh = (_split_heads(t, num_heads, dtype) for t in (q, k, v))
    size, half = kernel_size, rel_h.shape[1]
    # q . r for r = concat(rel_h[a], rel_w[b]), from two small matmuls: (K, B, H, W, heads)
    q_rel_h = (qh[..., :half] @ rel_h.to(dtype).t()).movedim(-1, 0).contiguous()
    q_rel_w = (qh[..., half:] @ rel_w.to(dtype).t()).movedim(-1, 0).contiguous()
    attn = qh.new_full((size * size, batch, height, width, num_heads), float('-inf'))
    out = qh.new_zeros(qh.shape)
    blocks = row_blocks(q)
    scratch = qh.new_empty((batch, max(stop - start for start, stop in blocks),
                            *qh.shape[2:]))
    for block in blocks:
        offsets = list(window_offsets(size, height, width, block))
        for o, _, _, (rows, cols), (in_rows, in_cols) in offsets:
            dot_last_into(attn[o, :, rows, cols], qh[:, rows, cols], kh[:, in_rows, in_cols],
                          scratch)
        logits = attn[:, :, block[0]:block[1]]
        grid = logits.unflatten(0, (size, size))  # offset (a, b); -inf stays -inf
        grid.add_(q_rel_h[:, None, :, block[0]:block[1]])
        grid.add_(q_rel_w[None, :, :, block[0]:block[1]])
        _softmax_first(logits)  # in place: attn now holds the weights of these rows
        for o, _, _, (rows, cols), (in_rows, in_cols) in offsets:
            out[:, rows, cols].addcmul_(attn[o, :, rows, cols, :, None],
                                        vh[:, in_rows, in_cols])
    return out.flatten(-2).to(q.dtype), attn


def local_attention_fast_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                                  v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor,
                                  attn: torch.Tensor, num_heads: int, kernel_size: int,
                                  needs: tuple = (True,) * 5) -> tuple:
    """Gradients (q, k, v, rel_h, rel_w) from the saved weights attn (K*K, B, H, W, heads);
    None where ``needs`` (five flags, in that order) says a gradient is not wanted."""
    batch, height, width, channels = q.shape
    dtype = attn.dtype
    g, qh, kh, vh = (_split_heads(t, num_heads, dtype) for t in (grad_out, q, k, v))
    need_q, need_k, need_v, need_rh, need_rw = (bool(n) for n in needs)
    size, half = kernel_size, rel_h.shape[1]
    grad_logits = attn.new_zeros(attn.shape)
    grad_q = qh.new_zeros(qh.shape) if need_q else None
    grad_k = kh.new_zeros(kh.shape) if need_k else None
    grad_v = vh.new_zeros(vh.shape) if need_v else None
    blocks = row_blocks(q)
    scratch = vh.new_empty((batch, max(stop - start for start, stop in blocks),
                            *vh.shape[2:]))
    for block in blocks:
        offsets = list(window_offsets(size, height, width, block))
        for o, _, _, (rows, cols), (in_rows, in_cols) in offsets:
            g_o = g[:, rows, cols]
            dot_last_into(grad_logits[o, :, rows, cols], g_o, vh[:, in_rows, in_cols], scratch)
            if need_v:
                grad_v[:, in_rows, in_cols].addcmul_(attn[o, :, rows, cols, :, None], g_o)
        # softmax backward in place: dL/dlogit = attn * (dL/dattn - sum(dL/dattn * attn));
        # masked offsets have attn == 0, hence zero gradient
        grad_attn = grad_logits[:, :, block[0]:block[1]]
        weights = attn[:, :, block[0]:block[1]]
        grad_attn.sub_((grad_attn * weights).sum(dim=0, keepdim=True)).mul_(weights)
        for o, _, _, (rows, cols), (in_rows, in_cols) in offsets:
            gl = grad_logits[o, :, rows, cols, :, None]
            if need_q:
                grad_q[:, rows, cols].addcmul_(gl, kh[:, in_rows, in_cols])
            if need_k:
                grad_k[:, in_rows, in_cols].addcmul_(gl, qh[:, rows, cols])
    del scratch
    grid = grad_logits.view(size, size, *grad_logits.shape[1:])
    gl_rows, gl_cols = grid.sum(dim=1), grid.sum(dim=0)  # (K, B, H, W, heads): per a / b
    if need_q:
        grad_q[..., :half] += gl_rows.movedim(0, -1) @ rel_h.to(dtype)
        grad_q[..., half:] += gl_cols.movedim(0, -1) @ rel_w.to(dtype)
    grad_rel_h = grad_rel_w = None
    if need_rh:
        grad_rel_h = gl_rows.reshape(size, -1) @ qh[..., :half].reshape(-1, half)
        grad_rel_h = grad_rel_h.to(rel_h.dtype)
    if need_rw:
        grad_rel_w = gl_cols.reshape(size, -1) @ qh[..., half:].reshape(-1, half)
        grad_rel_w = grad_rel_w.to(rel_w.dtype)
    grads = [None if t is None else t.flatten(-2).to(ref.dtype)
             for t, ref in ((grad_q, q), (grad_k, k), (grad_v, v))]
    return (*grads, grad_rel_h, grad_rel_w)


def _local_attention_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          rel_h: torch.Tensor, rel_w: torch.Tensor, num_heads: int,
                          kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch, height, width, _ = q.shape
    attn = q.new_empty((kernel_size * kernel_size, batch, height, width, num_heads),
                       dtype=compute_dtype(q.dtype))
    return torch.empty_like(q, memory_format=torch.contiguous_format), attn


#: The fast path as a differentiable custom op (:func:`~mmvolo.ops.custom_op.define_op`):
#: saves the inputs and the softmax weights (K*K per pixel and head).
_local_attention_op = define_op('mmvolo::local_attention_fast', local_attention_fast_forward,
                                local_attention_fast_backward, num_inputs=5,
                                fake=_local_attention_fake)


def local_attention_fast(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         rel_h: torch.Tensor, rel_w: torch.Tensor, num_heads: int,
                         kernel_size: int = 7) -> torch.Tensor:
    """Memory-light local attention (see the module docstring); shapes as the reference."""
    tensors = (t.contiguous() for t in (q, k, v, rel_h, rel_w))
    return _local_attention_op(*tensors, num_heads, kernel_size)[0]


#: The implementations of this op (:mod:`.dispatch`): 'fast' is the 'auto' choice.
LOCAL_ATTENTION_IMPLS = ImplRegistry(OP)
LOCAL_ATTENTION_IMPLS.register('reference')(local_attention_reference)
LOCAL_ATTENTION_IMPLS.register('fast', priority=10)(local_attention_fast)


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor,
                    rel_w: torch.Tensor, num_heads: int, kernel_size: int = 7,
                    impl: str | None = 'auto') -> torch.Tensor:
    """SASA local self-attention on channels-last tokens (module docstring: the formula).

    Args:
        q: pre-scaled queries, (B, H, W, C).
        k, v: keys and values, (B, H, W, C).
        rel_h, rel_w: row / column offset embeddings, (K, d/2) each, d = C / num_heads (even).
        num_heads: heads.
        kernel_size: window K, odd; centred, stride 1. Default: 7 (the paper's).
        impl: 'auto' (= 'fast', the default), 'fast' or 'reference'; see :mod:`.dispatch`
            (``impl=``, ``MMVOLO_<OP>_IMPL``, :func:`~mmvolo.ops.forced_impl`).

    Returns:
        (B, H, W, C), dtype of q.
    """
    LOCAL_ATTENTION_IMPLS.check_name(impl)
    check_local_attention_inputs(q, k, v, rel_h, rel_w, num_heads, kernel_size)
    name = LOCAL_ATTENTION_IMPLS.select(q, k, v, impl=impl)
    return LOCAL_ATTENTION_IMPLS.run(name)(q, k, v, rel_h, rel_w, num_heads, kernel_size)


__all__ = ['LOCAL_ATTENTION_IMPLS', 'local_attention', 'local_attention_fast',
           'local_attention_reference',
           'check_local_attention_inputs', 'relative_embedding']
