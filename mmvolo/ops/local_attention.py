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
* ``'fast'`` (``'auto'``): the op's configuration of the family, ``local_aggregate(v,
  local_similarity(q, k, K, scale=1, groups=heads) + q . r, K, padding=K//2, groups=heads,
  normalize='softmax')``, run fused by :func:`~.local_aggregate_kernels.attend_shifted`
  (one pass per row block over the taps' rectangles of
  :meth:`~.local_aggregate.Geometry.tap_slices`); the relative term comes from two small
  matmuls, (B, H, W, heads, K) per axis. Saved: q, k, v, those terms and the softmax
  weights (K*K*heads*H*W), nothing of size K*K*C*H*W.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import ImplRegistry
from .local_aggregate import check_kernel_size, check_tokens
from .local_aggregate_kernels import attend_shifted

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
    ones = q.new_ones(1, 1, height, width)
    inside = F.unfold(ones, kernel_size, padding=kernel_size // 2)[0] > 0  # (K*K, H*W)
    attn = logits.masked_fill(~inside, float('-inf')).softmax(dim=2)
    out = (attn[:, :, None] * v_unf).sum(dim=3)  # (B, heads, d, H*W)
    return out.reshape(batch, channels, height, width).permute(0, 2, 3, 1)


def relative_logits(q: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor,
                    num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q . r[a, b] = q_row . rel_h[a] + q_col . rel_w[b], as its two (B, H, W, heads, K)
    terms (row offset a, column offset b)."""
    qh = q.unflatten(-1, (num_heads, q.shape[-1] // num_heads))
    half = rel_h.shape[1]
    return qh[..., :half] @ rel_h.to(q.dtype).t(), qh[..., half:] @ rel_w.to(q.dtype).t()


def local_attention_fast(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         rel_h: torch.Tensor, rel_w: torch.Tensor, num_heads: int,
                         kernel_size: int = 7) -> torch.Tensor:
    """Local attention as ``local_aggregate(v, local_similarity(q, k) + q . r, normalize=
    'softmax')``, fused (:func:`~.local_aggregate_kernels.attend_shifted`); shapes as the
    reference."""
    bias_rows, bias_cols = relative_logits(q, rel_h, rel_w, num_heads)
    return attend_shifted(q, k, v, bias_rows, bias_cols, kernel_size, groups=num_heads)


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
           'check_local_attention_inputs', 'relative_embedding', 'relative_logits']
