"""``mmvolo.ops.local_aggregate`` / ``local_similarity`` / ``deform_aggregate`` (issue #23,
phase 1): every configuration of the family against an oracle that shares no code with the
op, in float64 on CPU, values and every gradient (value, weight, offset, query, key).

Oracles (all in this file or outside mmvolo's new code):

* depthwise conv: ``F.conv2d(groups=C)``;
* involution (any stride, padding, dilation, groups): an ``F.unfold`` formula;
* outlook (fold): mmvolo's ``outlook_attention_reference`` and tests/literal_outlook.py;
* SASA (local_similarity -> softmax -> local_aggregate): an ``F.unfold`` formula with the
  out-of-image taps masked; with the relative embedding, ``mmvolo.ops.local_attention``;
* neighborhood attention (``boundary='clamp'``): windows gathered by index lists built in
  plain Python (the NATTEN rule, dilation classes included);
* deformable: ``torchvision.ops.deform_conv2d`` (DCNv1: no mask; DCNv2: mask; DCNv3: the
  softmax of the mask applied first; DCNv4: unnormalised, through the fused-layout adapter)
  and, independently, a ``F.grid_sample`` formula (a second, independent backward); the
  DCNv3 layout against a grid_sample oracle written in DCNv3's own layout;
* deformable outlook (offsets with ``fold=True``): a ``F.grid_sample`` gather + ``F.fold``
  formula and, independently, torchvision per output tap + an explicit index scatter.

Both impls ('reference', 'fast') are checked against the oracles; the fast path's
hand-written backwards pass ``gradcheck``; fp32 / bf16 against fp64 with per-dtype
tolerances; the fast path is deterministic and independent of its row blocking.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from literal_outlook import literal_outlook_attention

from mmvolo.ops import (
    deform_aggregate,
    local_aggregate,
    local_attention,
    local_similarity,
    outlook_attention,
    outlook_attention_reference,
)
from mmvolo.ops.deform_aggregate import (
    aggregate_to_dcnv3,
    aggregate_to_dcnv4,
    aggregate_to_torchvision,
    dcnv3_to_aggregate,
    dcnv4_channels,
    dcnv4_to_aggregate,
    torchvision_to_aggregate,
)
from mmvolo.ops.tiling import BLOCK_ENV_VAR

torchvision_ops = pytest.importorskip('torchvision.ops')

REPO = Path(__file__).resolve().parents[1]
IMPLS = ['reference', 'fast']
F64 = torch.float64
TOL64 = 1e-10
#: max |got - want| / max(1, max |want|) of fp32 / bf16 inputs (the fp64 oracle evaluated
#: on the same rounded inputs); the fast path computes bf16 in fp32, so bf16 error is the
#: rounding of the result to 8 mantissa bits.
DTYPE_TOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2}


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------

def randn(gen: torch.Generator, *shape: int, scale: float = 1.0, dtype=F64) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen, dtype=F64) * scale).to(dtype)


def out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def value_and_grads(fn, inputs, seed: int = 123):
    """(out, d<out, g>/d input for every input) for a fixed random g."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(out.shape, generator=gen, dtype=F64).to(out.dtype)
    finite = torch.isfinite(out)
    loss = (torch.where(finite, out, torch.zeros_like(out)) * g).sum()
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [out.detach(), *grads]


def max_err(got, want) -> list[float]:
    errs = []
    for a, b in zip(got, want):
        a, b = a.double(), b.double()
        same_inf = torch.isinf(a) & torch.isinf(b) & (a == b)
        errs.append((torch.where(same_inf, 0, a - b)).abs().max().item() if a.numel() else 0.)
    return errs


def assert_equal(got, want, tol: float = TOL64) -> None:
    errs = max_err(got, want)
    assert len(got) == len(want) and max(errs) <= tol, errs


def unfold_windows(x: torch.Tensor, k: int, s: int, p: int, d: int) -> torch.Tensor:
    """x (B, H, W, C) -> (B, C, K*K, Ho, Wo) by F.unfold (zero padding)."""
    batch, height, width, channels = x.shape
    u = F.unfold(x.permute(0, 3, 1, 2), k, dilation=d, padding=p, stride=s)
    return u.view(batch, channels, k * k, out_size(height, k, s, p, d),
                  out_size(width, k, s, p, d))


# ------------------------------------------------------------------------------------------
# Oracles
# ------------------------------------------------------------------------------------------

def conv_oracle(x, w, k, s, p, d):
    """Depthwise conv: x (B, H, W, C), w (C, K*K)."""
    channels = x.shape[-1]
    out = F.conv2d(x.permute(0, 3, 1, 2), w.view(channels, 1, k, k), stride=s, padding=p,
                   dilation=d, groups=channels)
    return out.permute(0, 2, 3, 1)


def involution_oracle(x, ker, k, s, p, d, groups):
    """x (B, H, W, C), ker (B, Ho, Wo, G, K*K)."""
    u = unfold_windows(x, k, s, p, d)
    batch, channels, kk, out_h, out_w = u.shape
    u = u.view(batch, groups, channels // groups, kk, out_h, out_w)
    kern = ker.permute(0, 3, 4, 1, 2)[:, :, None]
    out = (u * kern).sum(3).reshape(batch, channels, out_h, out_w)
    return out.permute(0, 2, 3, 1)


def sasa_oracle(q, key, v, k, d, groups, scale):
    """Softmax over the in-image taps of scale * q . key, times v (unfold formula)."""
    batch, height, width, channels = q.shape
    p = d * (k // 2)
    cg = channels // groups
    uk = unfold_windows(key, k, 1, p, d).view(batch, groups, cg, k * k, height, width)
    uv = unfold_windows(v, k, 1, p, d).view(batch, groups, cg, k * k, height, width)
    qv = q.permute(0, 3, 1, 2).reshape(batch, groups, cg, 1, height, width)
    logits = (qv * uk).sum(2) * scale
    inside = unfold_windows(torch.ones(1, height, width, 1, dtype=q.dtype), k, 1, p, d) > 0
    attn = logits.masked_fill(~inside.view(1, 1, k * k, height, width), float('-inf'))
    attn = attn.softmax(2)
    out = (attn[:, :, None] * uv).sum(3).reshape(batch, channels, height, width)
    return out.permute(0, 2, 3, 1)


def natten_index(size: int, k: int, d: int) -> torch.Tensor:
    """(size, K) window positions per pixel, by NATTEN's rule in plain Python: the pixels of
    i's dilation class, a window of K of them centred on i and shifted to stay inside."""
    rows = []
    for i in range(size):
        members = list(range(i % d, size, d))
        j = members.index(i)
        start = min(max(j - k // 2, 0), len(members) - k)
        rows.append(members[start:start + k])
    return torch.tensor(rows)


def clamp_oracle(x, weight, k, d, groups):
    """Neighborhood-style aggregation: x (B, H, W, C), weight (B, H, W, G, K*K)."""
    batch, height, width, channels = x.shape
    rows, cols = natten_index(height, k, d), natten_index(width, k, d)
    win = x[:, rows[:, None, :, None], cols[None, :, None, :]]  # (B, H, W, K, K, C)
    win = win.reshape(batch, height, width, k * k, groups, channels // groups)
    out = (weight.transpose(-1, -2)[..., None] * win).sum(3)
    return out.reshape(batch, height, width, channels)


def clamp_similarity_oracle(q, key, k, d, groups, scale):
    batch, height, width, channels = q.shape
    rows, cols = natten_index(height, k, d), natten_index(width, k, d)
    win = key[:, rows[:, None, :, None], cols[None, :, None, :]]
    win = win.reshape(batch, height, width, k * k, groups, channels // groups)
    qg = q.reshape(batch, height, width, 1, groups, channels // groups)
    return ((qg * win).sum(-1) * scale).transpose(-1, -2)  # (B, H, W, G, K*K)


def deform_grid_sample(x, offset, mask, k, s, p, d):
    """torchvision layouts (x NCHW, offset (B, 2GKK, Ho, Wo), mask (B, GKK, Ho, Wo) or None)
    by F.grid_sample per tap (zeros padding, align_corners=False on pixel centres)."""
    batch, channels, height, width = x.shape
    out_h, out_w = offset.shape[-2:]
    groups = offset.shape[1] // (2 * k * k)
    cg = channels // groups
    off = offset.view(batch, groups, k * k, 2, out_h, out_w)
    rows = (torch.arange(out_h, dtype=x.dtype) * s - p)[:, None]
    cols = (torch.arange(out_w, dtype=x.dtype) * s - p)[None, :]
    xg = x.reshape(batch * groups, cg, height, width)
    out = 0
    for tap in range(k * k):
        a, b = divmod(tap, k)
        y = rows + a * d + off[:, :, tap, 0]
        xx = cols + b * d + off[:, :, tap, 1]
        grid = torch.stack(((2 * xx + 1) / width - 1, (2 * y + 1) / height - 1), dim=-1)
        sample = F.grid_sample(xg, grid.reshape(batch * groups, out_h, out_w, 2),
                               mode='bilinear', padding_mode='zeros', align_corners=False)
        sample = sample.view(batch, groups, cg, out_h, out_w)
        if mask is not None:
            sample = sample * mask.view(batch, groups, k * k, out_h, out_w)[:, :, tap, None]
        out = out + sample
    return out.reshape(batch, channels, out_h, out_w)


def deform_torchvision(x, offset, mask, k, s, p, d):
    ones = torch.ones(x.shape[1], 1, k, k, dtype=x.dtype)
    return torchvision_ops.deform_conv2d(x, offset, ones, mask=mask, stride=s, padding=p,
                                         dilation=d)


def deform_inputs(gen, batch, channels, height, width, groups, k, s, p, d, far: bool = True):
    """x NCHW, offsets ~ 1.5 N(0, 1) kept off the integer grid, some taps pushed to
    +-(H+2) (fully outside the image), mask ~ N(0, 1)."""
    out_h, out_w = out_size(height, k, s, p, d), out_size(width, k, s, p, d)
    x = randn(gen, batch, channels, height, width)
    off = randn(gen, batch, 2 * groups * k * k, out_h, out_w, scale=1.5)
    if far:
        flat = off.view(-1)
        pick = torch.randperm(flat.numel(), generator=gen)[:max(1, flat.numel() // 10)]
        sign = torch.where(torch.rand(pick.numel(), generator=gen) < 0.5, -1.0, 1.0)
        flat[pick] = sign.to(F64) * (height + 2 + 0.37)
    off = off + 0.0173  # integer positions are measure-zero, but keep clear of them
    mask = randn(gen, batch, groups * k * k, out_h, out_w)
    return x, off, mask


# ------------------------------------------------------------------------------------------
# Convolution, involution
# ------------------------------------------------------------------------------------------

CONV_CASES = [  # (H, W, K, S, P, D)
    (5, 7, 3, 1, 1, 1), (7, 5, 3, 2, 1, 1), (9, 6, 3, 2, 2, 2), (5, 7, 2, 1, 0, 1),
    (6, 9, 5, 2, 2, 1), (1, 1, 3, 1, 1, 1),
]


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('case', CONV_CASES, ids=str)
def test_depthwise_conv_equals_conv2d(impl, case):
    height, width, k, s, p, d = case
    gen = torch.Generator().manual_seed(1)
    x, w = randn(gen, 2, height, width, 5), randn(gen, 5, k * k)
    want = value_and_grads(lambda x, w: conv_oracle(x, w, k, s, p, d), [x, w])
    got = value_and_grads(lambda x, w: local_aggregate(x, w, k, s, p, d, groups=5, impl=impl),
                          [x, w])
    assert_equal(got, want)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('case', CONV_CASES, ids=str)
@pytest.mark.parametrize('groups', [1, 3])
def test_involution_equals_unfold(impl, case, groups):
    """Per-position kernels per group; C = 15 (group width 5 for G = 3)."""
    height, width, k, s, p, d = case
    gen = torch.Generator().manual_seed(2)
    out_h, out_w = out_size(height, k, s, p, d), out_size(width, k, s, p, d)
    x, ker = randn(gen, 2, height, width, 15), randn(gen, 2, out_h, out_w, groups, k * k)
    want = value_and_grads(lambda x, w: involution_oracle(x, w, k, s, p, d, groups), [x, ker])
    got = value_and_grads(lambda x, w: local_aggregate(x, w, k, s, p, d, groups, impl=impl),
                          [x, ker])
    assert_equal(got, want)


@pytest.mark.parametrize('impl', IMPLS)
def test_static_group_weights_and_softmax(impl):
    """Static (G, K*K) weights shared by C/G channels, with the softmax over taps."""
    gen = torch.Generator().manual_seed(3)
    x, w = randn(gen, 2, 7, 5, 6), randn(gen, 3, 9)

    def oracle(x, w):
        per_channel = w.softmax(-1).repeat_interleave(2, dim=0)
        return conv_oracle(x, per_channel, 3, 2, 1, 1)

    got = value_and_grads(lambda x, w: local_aggregate(x, w, 3, 2, 1, groups=3,
                                                       normalize='softmax', impl=impl), [x, w])
    assert_equal(got, value_and_grads(oracle, [x, w]))


# ------------------------------------------------------------------------------------------
# Outlook attention (fold)
# ------------------------------------------------------------------------------------------

def outlook_via_aggregate(v, logits, heads, k, p, s, impl):
    batch, h, w, _ = logits.shape
    return local_aggregate(v, logits.view(batch, h, w, heads, k * k, k * k), k, stride=s,
                           padding=p, groups=heads, normalize='softmax', fold=True, impl=impl)


OUTLOOK_CASES = [(5, 7, 2, 3), (9, 13, 2, 1), (4, 4, 1, 2), (1, 1, 2, 1), (2, 3, 1, 3)]


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('height,width,stride,heads', OUTLOOK_CASES)
def test_outlook_equals_reference_and_literal(impl, height, width, stride, heads):
    """VOLO's ceil mode: the grid is ceil(H/S) x ceil(W/S) (K=3, P=1)."""
    gen = torch.Generator().manual_seed(4)
    h, w = math.ceil(height / stride), math.ceil(width / stride)
    v, logits = randn(gen, 2, height, width, heads * 5), randn(gen, 2, h, w, heads * 81)
    got = value_and_grads(lambda v, lg: outlook_via_aggregate(v, lg, heads, 3, 1, stride, impl),
                          [v, logits])
    ref = value_and_grads(lambda v, lg: outlook_attention_reference(v, lg, heads, 3, 1, stride),
                          [v, logits])
    assert_equal(got, ref)
    if height * width <= 35:
        lit = value_and_grads(
            lambda v, lg: literal_outlook_attention(v, lg, heads, 3, 1, stride), [v, logits])
        assert_equal(got, lit)


@pytest.mark.parametrize('impl', IMPLS)
def test_fold_without_softmax_and_static(impl):
    """fold=True with raw weights (dynamic and static) equals the literal formula with the
    softmax removed: log-weights through the literal outlook give softmax(log w) = w/sum w,
    so compare against a direct unfold/fold formula instead."""
    gen = torch.Generator().manual_seed(5)
    heads, k, p, s = 2, 3, 1, 2
    v = randn(gen, 1, 5, 7, 6)
    h, w = 3, 4
    for weight in (randn(gen, 1, h, w, heads, 9, 9), randn(gen, heads, 9, 9)):
        def oracle(v, a):
            a = a.expand(1, h, w, heads, 9, 9)
            u = F.unfold(v.permute(0, 3, 1, 2), k, padding=p, stride=s)  # (1, C*9, h*w)
            u = u.view(1, heads, 3, 9, h * w).permute(0, 4, 1, 3, 2)  # (1, hw, heads, 9, d)
            y = a.reshape(1, h * w, heads, 9, 9) @ u  # (1, hw, heads, 9 k_out, d)
            y = y.permute(0, 2, 4, 3, 1).reshape(1, 6 * 9, h * w)
            return F.fold(y, (5, 7), k, padding=p, stride=s).permute(0, 2, 3, 1)

        got = value_and_grads(lambda v, a: local_aggregate(v, a, k, s, p, groups=heads,
                                                           fold=True, impl=impl), [v, weight])
        assert_equal(got, value_and_grads(oracle, [v, weight]))


def test_volo_outlook_through_aggregate_equals_outlook_attention():
    """VOLO-D1 stage-1 outlook (K=3, P=1, S=2, 6 heads, logits from a linear layer scaled by
    head_dim**-0.5) scaled down (2x15x17 tokens, C=48), fp32: within 1e-6 of
    ``outlook_attention(..., impl='reference')``, both impls, values and gradients."""
    gen = torch.Generator().manual_seed(6)
    heads, channels = 6, 48
    v = randn(gen, 2, 15, 17, channels, dtype=torch.float32)
    x = randn(gen, 2, 8, 9, channels, dtype=torch.float32)
    proj = randn(gen, channels, heads * 81, scale=channels ** -0.5, dtype=torch.float32)
    logits = (x @ proj) * (channels // heads) ** -0.5
    want = value_and_grads(lambda v, lg: outlook_attention(v, lg, heads, 3, 1, 2,
                                                           impl='reference'), [v, logits])
    for impl in IMPLS:
        got = value_and_grads(lambda v, lg, i=impl: outlook_via_aggregate(v, lg, heads, 3, 1, 2, i),
                              [v, logits])
        assert max(max_err(got, want)) <= 1e-6, (impl, max_err(got, want))


# ------------------------------------------------------------------------------------------
# SASA / neighborhood attention
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('height,width,k,d,groups', [(5, 7, 3, 1, 3), (7, 6, 3, 2, 1),
                                                     (6, 5, 5, 1, 2), (1, 1, 3, 1, 1)])
def test_sasa_equals_unfold(impl, height, width, k, d, groups):
    gen = torch.Generator().manual_seed(7)
    q, key, v = (randn(gen, 2, height, width, 6) for _ in range(3))
    scale = 0.7

    def ours(q, key, v):
        logits = local_similarity(q, key, k, dilation=d, scale=scale, groups=groups, impl=impl)
        return local_aggregate(v, logits.softmax(-1), k, padding=d * (k // 2), dilation=d,
                               groups=groups, impl=impl)

    want = value_and_grads(lambda q, key, v: sasa_oracle(q, key, v, k, d, groups, scale),
                           [q, key, v])
    assert_equal(value_and_grads(ours, [q, key, v]), want)
    # normalize='softmax' inside the op is the same (-inf taps get weight 0)
    got = value_and_grads(lambda q, key, v: local_aggregate(
        v, local_similarity(q, key, k, dilation=d, scale=scale, groups=groups, impl=impl), k,
        padding=d * (k // 2), dilation=d, groups=groups, normalize='softmax', impl=impl),
        [q, key, v])
    assert_equal(got, want)


@pytest.mark.parametrize('impl', IMPLS)
def test_sasa_with_relative_embedding_equals_local_attention(impl):
    """mmvolo's LocalSelfAttention op = local_similarity + q . r, softmax, local_aggregate."""
    bench = _load_benchmark()
    gen = torch.Generator().manual_seed(8)
    heads, k = 2, 5
    q, key, v = (randn(gen, 1, 6, 7, 8) for _ in range(3))
    rel_h, rel_w = randn(gen, k, 2), randn(gen, k, 2)

    def ours(q, key, v, rel_h, rel_w):
        logits = bench.sasa_logits(q, key, rel_h, rel_w, heads, k)
        return local_aggregate(v, logits.softmax(-1), k, padding=k // 2, groups=heads,
                               impl=impl)

    want = value_and_grads(lambda *t: local_attention(*t, heads, k, impl='reference'),
                           [q, key, v, rel_h, rel_w])
    assert_equal(value_and_grads(ours, [q, key, v, rel_h, rel_w]), want)


@pytest.mark.parametrize('height,width,k,d,groups', [(5, 7, 3, 1, 3), (7, 6, 3, 2, 1),
                                                     (6, 5, 5, 1, 2), (1, 1, 3, 1, 1)])
def test_fused_attend_equals_similarity_softmax_aggregate(height, width, k, d, groups):
    """attend_shifted (SASA fused, local_attention's fast path) = the two ops' composition
    with a separable bias (reference impls), and = the unfold oracle without bias; values
    and the gradients of q, k, v and both bias terms."""
    from mmvolo.ops.local_aggregate_kernels import attend_shifted
    gen = torch.Generator().manual_seed(21)
    q, key, v = (randn(gen, 2, height, width, 6) for _ in range(3))
    rows, cols = (randn(gen, 2, height, width, groups, k) for _ in range(2))

    def composed(q, key, v, rows, cols):
        logits = local_similarity(q, key, k, dilation=d, scale=1.0, groups=groups,
                                  impl='reference')
        logits = logits + (rows[..., :, None] + cols[..., None, :]).flatten(-2)
        return local_aggregate(v, logits, k, padding=d * (k // 2), dilation=d, groups=groups,
                               normalize='softmax', impl='reference')

    inputs = [q, key, v, rows, cols]
    got = value_and_grads(lambda *t: attend_shifted(*t, k, d, groups), inputs)
    assert_equal(got, value_and_grads(composed, inputs))
    zero = [q, key, v, torch.zeros_like(rows), torch.zeros_like(cols)]
    got = value_and_grads(lambda *t: attend_shifted(*t, k, d, groups), zero)[:4]
    want = value_and_grads(lambda q, key, v: sasa_oracle(q, key, v, k, d, groups, 1.0), zero[:3])
    assert_equal(got, want)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('height,width,k,d', [(5, 7, 3, 1), (6, 9, 3, 2), (7, 7, 5, 1),
                                              (3, 4, 3, 1)])
def test_clamp_boundary_equals_natten_rule(impl, height, width, k, d):
    """boundary='clamp': similarity and aggregation over NATTEN's shifted windows."""
    gen = torch.Generator().manual_seed(9)
    groups = 3
    q, key, v = (randn(gen, 2, height, width, 6) for _ in range(3))
    w = randn(gen, 2, height, width, groups, k * k)
    got = value_and_grads(lambda v, w: local_aggregate(v, w, k, dilation=d, groups=groups,
                                                       boundary='clamp', impl=impl), [v, w])
    assert_equal(got, value_and_grads(lambda v, w: clamp_oracle(v, w, k, d, groups), [v, w]))
    got = value_and_grads(lambda q, key: local_similarity(
        q, key, k, dilation=d, boundary='clamp', scale=0.5, groups=groups, impl=impl), [q, key])
    want = value_and_grads(lambda q, key: clamp_similarity_oracle(q, key, k, d, groups, 0.5),
                           [q, key])
    assert_equal(got, want)


def test_similarity_default_scale_and_mask():
    gen = torch.Generator().manual_seed(10)
    q, key = randn(gen, 1, 4, 5, 8), randn(gen, 1, 4, 5, 8)
    logits = local_similarity(q, key, 3, groups=2)
    assert logits.shape == (1, 4, 5, 2, 9)
    assert torch.isinf(logits[0, 0, 0, :, 0]).all()  # top-left tap of the corner: outside
    centre = (q.view(1, 4, 5, 2, 4) * key.view(1, 4, 5, 2, 4)).sum(-1) * 0.5  # d = 4
    torch.testing.assert_close(logits[..., 4], centre)


# ------------------------------------------------------------------------------------------
# Deformable
# ------------------------------------------------------------------------------------------

DEFORM_CASES = [  # (H, W, K, S, P, D, G, C)
    (5, 7, 3, 1, 1, 1, 3, 15), (7, 5, 3, 2, 1, 1, 1, 4), (6, 7, 3, 1, 2, 2, 3, 6),
    (5, 6, 2, 2, 1, 1, 2, 6), (1, 1, 3, 1, 1, 1, 1, 2),
]


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('case', DEFORM_CASES, ids=str)
@pytest.mark.parametrize('variant', ['dcnv2', 'dcnv1'])
def test_deformable_equals_torchvision_and_grid_sample(impl, case, variant):
    height, width, k, s, p, d, groups, channels = case
    gen = torch.Generator().manual_seed(11)
    x, off, mask = deform_inputs(gen, 2, channels, height, width, groups, k, s, p, d)
    inputs = [x, off] if variant == 'dcnv1' else [x, off, mask]

    def with_mask(fn):
        return (lambda x, o: fn(x, o, None, k, s, p, d)) if variant == 'dcnv1' else \
            (lambda x, o, m: fn(x, o, m, k, s, p, d))

    got = value_and_grads(with_mask(lambda x, o, m, *a: deform_aggregate(x, o, m, *a,
                                                                         impl=impl)), inputs)
    tv = value_and_grads(with_mask(deform_torchvision), inputs)
    gs = value_and_grads(with_mask(deform_grid_sample), inputs)
    assert_equal(got, tv)
    assert_equal(got, gs)
    assert_equal(tv, gs)  # the two oracles (two independent backwards) agree


@pytest.mark.parametrize('impl', IMPLS)
def test_dcnv3_softmax_equals_torchvision_on_softmaxed_mask(impl):
    """normalize='softmax' over the K*K points of a group = torchvision with that mask."""
    height, width, k, s, p, d, groups, channels = 6, 5, 3, 2, 1, 1, 3, 9
    gen = torch.Generator().manual_seed(12)
    x, off, mask = deform_inputs(gen, 1, channels, height, width, groups, k, s, p, d)

    def ours(x, o, m):
        off_a, m_a = torchvision_to_aggregate(o, m, k)
        out = local_aggregate(x.permute(0, 2, 3, 1), m_a, k, s, p, d, groups, offset=off_a,
                              normalize='softmax', impl=impl)
        return out.permute(0, 3, 1, 2)

    def oracle(x, o, m):
        soft = m.view(1, groups, k * k, *m.shape[-2:]).softmax(2).view(m.shape)
        return deform_torchvision(x, o, soft, k, s, p, d)

    assert_equal(value_and_grads(ours, [x, off, mask]), value_and_grads(oracle, [x, off, mask]))


def dcnv3_grid_sample(x, offset, mask, k, s, p, d, groups):
    """DCNv3's own layout, channels-last: offset (B, Ho, Wo, G*P*2) with (x, y) per point,
    points column-major (x outer), mask (B, Ho, Wo, G*P) softmaxed over the points."""
    batch, height, width, channels = x.shape
    out_h, out_w = offset.shape[1:3]
    cg = channels // groups
    off = offset.view(batch, out_h, out_w, groups, k * k, 2)
    attn = mask.view(batch, out_h, out_w, groups, k * k).softmax(-1)
    xg = x.view(batch, height, width, groups, cg).permute(0, 3, 4, 1, 2)
    xg = xg.reshape(batch * groups, cg, height, width)
    rows = (torch.arange(out_h, dtype=x.dtype) * s - p)[:, None]
    cols = (torch.arange(out_w, dtype=x.dtype) * s - p)[None, :]
    out = 0
    point = 0
    for bx in range(k):  # x outer
        for ay in range(k):
            px = cols + bx * d + off[..., point, 0].permute(0, 3, 1, 2)
            py = rows + ay * d + off[..., point, 1].permute(0, 3, 1, 2)
            grid = torch.stack(((2 * px + 1) / width - 1, (2 * py + 1) / height - 1), dim=-1)
            sample = F.grid_sample(xg, grid.reshape(batch * groups, out_h, out_w, 2),
                                   mode='bilinear', padding_mode='zeros', align_corners=False)
            sample = sample.view(batch, groups, cg, out_h, out_w).permute(0, 3, 4, 1, 2)
            out = out + sample * attn[..., point, None]
            point += 1
    return out.reshape(batch, out_h, out_w, channels)


@pytest.mark.parametrize('impl', IMPLS)
def test_dcnv3_layout_adapter_equals_dcnv3_oracle(impl):
    height, width, k, s, p, d, groups, channels = 5, 6, 3, 1, 1, 1, 3, 6
    gen = torch.Generator().manual_seed(13)
    x = randn(gen, 2, height, width, channels)
    off = randn(gen, 2, height, width, groups * 9 * 2, scale=1.5)
    mask = randn(gen, 2, height, width, groups * 9)

    def ours(x, o, m):
        off_a, m_a = dcnv3_to_aggregate(o, m, k, groups)
        return local_aggregate(x, m_a, k, s, p, d, groups, offset=off_a, normalize='softmax',
                               impl=impl)

    want = value_and_grads(lambda x, o, m: dcnv3_grid_sample(x, o, m, k, s, p, d, groups),
                           [x, off, mask])
    assert_equal(value_and_grads(ours, [x, off, mask]), want)


@pytest.mark.parametrize('impl', IMPLS)
def test_dcnv4_fused_layout_unnormalised(impl):
    """DCNv4: fused offset_mask padded to a multiple of 8, mask unnormalised; equals the
    DCNv3-layout oracle without its softmax (log of a positive mask through it) and
    torchvision on the converted layouts."""
    height, width, k, groups, channels = 5, 4, 3, 3, 6
    gen = torch.Generator().manual_seed(14)
    x = randn(gen, 1, height, width, channels)
    assert dcnv4_channels(k, groups) == 88  # 3 * 27 = 81 -> 88
    fused = randn(gen, 1, height, width, 88)
    fused[..., 81:] = 0

    def ours(x, f):
        off_a, m_a = dcnv4_to_aggregate(f, k, groups)
        return local_aggregate(x, m_a, k, 1, 1, 1, groups, offset=off_a, impl=impl)

    def oracle(x, f):
        off_a, m_a = dcnv4_to_aggregate(f, k, groups)
        o, m = aggregate_to_torchvision(off_a, m_a)
        return deform_torchvision(x.permute(0, 3, 1, 2), o, m, k, 1, 1, 1).permute(0, 2, 3, 1)

    assert_equal(value_and_grads(ours, [x, fused]), value_and_grads(oracle, [x, fused]))
    # the fused layout per group: K*K (x, y) pairs, then K*K mask values
    off_a, m_a = dcnv4_to_aggregate(fused, k, groups)
    per_group = fused[..., :81].view(1, height, width, groups, 27)
    off3, m3 = aggregate_to_dcnv3(off_a, m_a)
    torch.testing.assert_close(per_group[..., 18:].flatten(-2), m3)
    torch.testing.assert_close(per_group[..., :18].flatten(-2), off3)


def test_layout_round_trips():
    gen = torch.Generator().manual_seed(15)
    k, groups = 3, 3
    off_tv = randn(gen, 2, 2 * groups * 9, 4, 5)
    mask_tv = randn(gen, 2, groups * 9, 4, 5)
    off_a, m_a = torchvision_to_aggregate(off_tv, mask_tv, k)
    assert off_a.shape == (2, 4, 5, groups, 9, 2) and m_a.shape == (2, 4, 5, groups, 9)
    back = aggregate_to_torchvision(off_a, m_a)
    assert torch.equal(back[0], off_tv) and torch.equal(back[1], mask_tv)
    # torchvision channel 2*(g*KK + k) is dy of tap k (row-major) of group g
    assert off_a[1, 2, 3, 2, 5, 0] == off_tv[1, 2 * (2 * 9 + 5), 2, 3]
    off3, m3 = aggregate_to_dcnv3(off_a, m_a)
    assert off3.shape == (2, 4, 5, groups * 18) and m3.shape == (2, 4, 5, groups * 9)
    again = dcnv3_to_aggregate(off3, m3, k, groups)
    assert torch.equal(again[0], off_a) and torch.equal(again[1], m_a)
    # DCNv3 point p = b*K + a holds (dx, dy) of row-major tap a*K + b
    a, b, g = 0, 2, 1
    point = b * k + a
    assert off3[0, 0, 0, g * 18 + 2 * point] == off_a[0, 0, 0, g, a * k + b, 1]
    assert off3[0, 0, 0, g * 18 + 2 * point + 1] == off_a[0, 0, 0, g, a * k + b, 0]
    fused = aggregate_to_dcnv4(off_a, m_a)
    assert fused.shape == (2, 4, 5, 88) and torch.all(fused[..., 81:] == 0)
    again = dcnv4_to_aggregate(fused, k, groups)
    assert torch.equal(again[0], off_a) and torch.equal(again[1], m_a)


# ------------------------------------------------------------------------------------------
# Deformable outlook: offsets with fold=True
# ------------------------------------------------------------------------------------------

def deform_fold_oracle(v, weight, offset, k, s, p, d, groups, softmax):
    """Samples at the deformed positions by F.grid_sample (per tap, per offset group), the
    per-window product with the (softmaxed) K*K x K*K weights, then F.fold onto the fixed
    integer positions. v (B, H, W, C), weight (B, Ho, Wo, G, KK, KK) or (G, KK, KK), offset
    (B, Ho, Wo, Go, KK, 2) as (dy, dx)."""
    batch, height, width, channels = v.shape
    out_h, out_w, off_groups = offset.shape[1], offset.shape[2], offset.shape[3]
    kk = k * k
    cgo = channels // off_groups
    xg = v.permute(0, 3, 1, 2).reshape(batch * off_groups, cgo, height, width)
    rows = (torch.arange(out_h, dtype=v.dtype) * s - p)[:, None]
    cols = (torch.arange(out_w, dtype=v.dtype) * s - p)[None, :]
    taps = []
    for tap in range(kk):
        a, b = divmod(tap, k)
        y = rows + a * d + offset[..., tap, 0].permute(0, 3, 1, 2)  # (B, Go, Ho, Wo)
        x = cols + b * d + offset[..., tap, 1].permute(0, 3, 1, 2)
        grid = torch.stack(((2 * x + 1) / width - 1, (2 * y + 1) / height - 1), dim=-1)
        sample = F.grid_sample(xg, grid.reshape(batch * off_groups, out_h, out_w, 2),
                               mode='bilinear', padding_mode='zeros', align_corners=False)
        taps.append(sample.reshape(batch, channels, out_h, out_w))
    samples = torch.stack(taps, dim=2)  # (B, C, KK k_in, Ho, Wo)
    attn = weight.softmax(-1) if softmax else weight
    attn = attn.expand(batch, out_h, out_w, groups, kk, kk)
    per_channel = attn.repeat_interleave(channels // groups, dim=3)  # (B, Ho, Wo, C, KK, KK)
    y = torch.einsum('bhwcoi,bcihw->bcohw', per_channel, samples)
    return F.fold(y.reshape(batch, channels * kk, out_h * out_w), (height, width), k,
                  dilation=d, padding=p, stride=s).permute(0, 2, 3, 1)


def deform_fold_torchvision(v, weight, offset, k, s, p, d, groups, softmax):
    """Second oracle (Go = G): output tap k_o of every window is torchvision's deformable
    conv with mask A[..., k_o, :]; placed on its fixed positions by an explicit index
    scatter (positions outside the image dropped)."""
    batch, height, width, channels = v.shape
    out_h, out_w = offset.shape[1:3]
    kk = k * k
    attn = weight.softmax(-1) if softmax else weight
    attn = attn.expand(batch, out_h, out_w, groups, kk, kk)
    off_tv = offset.permute(0, 3, 4, 5, 1, 2).reshape(batch, groups * kk * 2, out_h, out_w)
    ones = torch.ones(channels, 1, k, k, dtype=v.dtype)
    x = v.permute(0, 3, 1, 2)
    out = v.new_zeros(batch, channels, height * width)
    for k_o in range(kk):
        mask = attn[..., k_o, :].permute(0, 3, 4, 1, 2).reshape(batch, groups * kk, out_h,
                                                                out_w)
        y = torchvision_ops.deform_conv2d(x, off_tv, ones, mask=mask, stride=s, padding=p,
                                          dilation=d)  # (B, C, Ho, Wo)
        a, b = divmod(k_o, k)
        for i in range(out_h):
            for j in range(out_w):
                r, c = i * s - p + a * d, j * s - p + b * d
                if 0 <= r < height and 0 <= c < width:
                    out[:, :, r * width + c] = out[:, :, r * width + c] + y[:, :, i, j]
    return out.view(batch, channels, height, width).permute(0, 2, 3, 1)


DEFORM_FOLD_CASES = [  # (H, W, K, S, P, D, G, Go, C)
    (5, 7, 3, 2, 1, 1, 3, 3, 6),  # VOLO's ceil grid: 3 x 4
    (6, 5, 3, 1, 1, 1, 3, 1, 9),  # offset groups != weight groups
    (7, 6, 3, 2, 2, 2, 3, 3, 15),  # dilation 2, group width 5
    (5, 4, 2, 2, 1, 1, 1, 2, 4),  # even K
    (1, 1, 3, 1, 1, 1, 1, 1, 2),
]


def deform_fold_inputs(gen, case, static: bool = False):
    height, width, k, s, p, d, groups, off_groups, channels = case
    out_h, out_w = out_size(height, k, s, p, d), out_size(width, k, s, p, d)
    kk = k * k
    v = randn(gen, 2, height, width, channels)
    weight = randn(gen, groups, kk, kk) if static else randn(gen, 2, out_h, out_w, groups,
                                                            kk, kk)
    off = randn(gen, 2, out_h, out_w, off_groups, kk, 2, scale=1.5)
    flat = off.view(-1)
    pick = torch.randperm(flat.numel(), generator=gen)[:max(1, flat.numel() // 10)]
    flat[pick] = torch.where(torch.rand(pick.numel(), generator=gen) < 0.5, -1.0,
                             1.0).to(F64) * (height + 2 + 0.37)  # fully outside
    return v, weight, off + 0.0173  # off the integer grid


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('case', DEFORM_FOLD_CASES, ids=str)
@pytest.mark.parametrize('softmax', [True, False], ids=['softmax', 'raw'])
def test_deformable_fold_equals_grid_sample_fold(impl, case, softmax):
    """Offsets with fold=True: inputs read at the deformed positions, outputs scattered onto
    the fixed ones; values and the value, weight and offset gradients."""
    height, width, k, s, p, d, groups, off_groups, _ = case
    gen = torch.Generator().manual_seed(18)
    inputs = list(deform_fold_inputs(gen, case))
    norm = 'softmax' if softmax else None

    def ours(v, w, o):
        return local_aggregate(v, w, k, s, p, d, groups, offset=o, normalize=norm, fold=True,
                               impl=impl)

    want = value_and_grads(
        lambda v, w, o: deform_fold_oracle(v, w, o, k, s, p, d, groups, softmax), inputs)
    got = value_and_grads(ours, inputs)
    assert_equal(got, want)
    if off_groups == groups:
        tv = value_and_grads(
            lambda v, w, o: deform_fold_torchvision(v, w, o, k, s, p, d, groups, softmax),
            inputs)
        assert_equal(tv, want)  # the two oracles (two independent backwards) agree
        assert_equal(got, tv)


@pytest.mark.parametrize('impl', IMPLS)
def test_deformable_fold_static_weights_and_zero_offsets(impl):
    """Static (G, KK, KK) weights with offsets; zero offsets give plain outlook exactly."""
    case = (7, 5, 3, 2, 1, 1, 3, 3, 6)
    height, width, k, s, p, d, groups, _, _ = case
    gen = torch.Generator().manual_seed(19)
    inputs = list(deform_fold_inputs(gen, case, static=True))
    want = value_and_grads(
        lambda v, w, o: deform_fold_oracle(v, w, o, k, s, p, d, groups, True), inputs)
    got = value_and_grads(lambda v, w, o: local_aggregate(
        v, w, k, s, p, d, groups, offset=o, normalize='softmax', fold=True, impl=impl), inputs)
    assert_equal(got, want)
    v, _, off = inputs
    w = randn(gen, 2, *off.shape[1:3], groups, 9, 9)
    plain = local_aggregate(v, w, k, s, p, d, groups, normalize='softmax', fold=True,
                            impl=impl)
    zero = local_aggregate(v, w, k, s, p, d, groups, offset=torch.zeros_like(off),
                           normalize='softmax', fold=True, impl=impl)
    assert_equal([zero], [plain], 1e-12)


# ------------------------------------------------------------------------------------------
# Fast path: gradcheck, blocking, determinism, dtypes
# ------------------------------------------------------------------------------------------

GRADCHECK_CASES = {  # name -> (fn, input shapes) on B=1, C=4, 5x7 (deformable 4x5)
    'involution_s2_d2': (lambda v, w: local_aggregate(v, w, 3, 2, 2, 2, groups=2),
                         [(1, 5, 7, 4), (1, 3, 4, 2, 9)]),
    'static_softmax': (lambda v, w: local_aggregate(v, w, 3, 1, 1, groups=4,
                                                    normalize='softmax'),
                       [(1, 5, 7, 4), (4, 9)]),
    'outlook_fold': (lambda v, w: local_aggregate(v, w, 3, 2, 1, groups=2, normalize='softmax',
                                                  fold=True),
                     [(1, 5, 7, 4), (1, 3, 4, 2, 9, 9)]),
    'clamp': (lambda v, w: local_aggregate(v, w, 3, groups=2, boundary='clamp'),
              [(1, 5, 7, 4), (1, 5, 7, 2, 9)]),
    'similarity': (lambda q, k: local_similarity(q, k, 3, groups=2, boundary='clamp'),
                   [(1, 5, 7, 4), (1, 5, 7, 4)]),
    'similarity_zeros_d2': (lambda q, k: local_similarity(q, k, 3, dilation=2, groups=2)
                            .clamp(min=-50.0), [(1, 5, 7, 4), (1, 5, 7, 4)]),
    'shifted_softmax_d2': (lambda v, w: local_aggregate(v, w, 3, 1, 2, 2, groups=2,
                                                        normalize='softmax'),
                           [(1, 5, 7, 4), (1, 5, 7, 2, 9)]),
    'attend_fused': (lambda q, k, v, r, c: _attend(q, k, v, r, c),
                     [(1, 4, 5, 4), (1, 4, 5, 4), (1, 4, 5, 4), (1, 4, 5, 2, 3),
                      (1, 4, 5, 2, 3)]),
    'deform_dcnv3': (lambda v, w, o: local_aggregate(v, w, 3, 1, 1, groups=2, offset=o,
                                                     normalize='softmax'),
                     [(1, 4, 5, 4), (1, 4, 5, 2, 9), (1, 4, 5, 2, 9, 2)]),
    'deform_static_s2': (lambda v, w, o: local_aggregate(v, w, 2, 2, 1, groups=4, offset=o),
                         [(1, 4, 5, 4), (4, 4), (1, 3, 3, 1, 4, 2)]),
    'deform_fold_s2': (lambda v, w, o: local_aggregate(v, w, 3, 2, 1, groups=3, offset=o,
                                                       normalize='softmax', fold=True),
                       [(1, 5, 4, 6), (1, 3, 2, 3, 9, 9), (1, 3, 2, 1, 9, 2)]),
    'deform_fold_static': (lambda v, w, o: local_aggregate(v, w, 2, 1, 0, groups=2, offset=o,
                                                           fold=True),
                           [(1, 3, 4, 4), (2, 4, 4), (1, 2, 3, 2, 4, 2)]),
}


def _attend(q, k, v, rows, cols):
    from mmvolo.ops.local_aggregate_kernels import attend_shifted
    return attend_shifted(q, k, v, rows, cols, 3, 1, 2)


#: full Jacobians for these; the larger ones check random projections (fast_mode)
FULL_GRADCHECK = ('static_softmax', 'deform_static_s2', 'deform_fold_static')


@pytest.mark.parametrize('name', list(GRADCHECK_CASES))
def test_fast_backward_gradcheck(name):
    fn, shapes = GRADCHECK_CASES[name]
    gen = torch.Generator().manual_seed(16)
    inputs = [randn(gen, *shape).requires_grad_() for shape in shapes]
    if len(inputs) == 3:  # offsets: off the integer grid (bilinear kinks), some far outside
        with torch.no_grad():
            inputs[2].mul_(1.3).add_(0.21)
            inputs[2].view(-1)[::7] = 6.37
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5,
                                    fast_mode=name not in FULL_GRADCHECK)


def _all_configs(impl: str):
    """(fn, inputs) of one small case per configuration, for the blocking / dtype tests."""
    gen = torch.Generator().manual_seed(17)
    x, off, mask = deform_inputs(gen, 2, 6, 7, 9, 3, 3, 1, 1, 1)
    v = randn(gen, 2, 7, 9, 6)
    return {
        'involution': (lambda v, w: local_aggregate(v, w, 3, 2, 1, groups=3, impl=impl),
                       [v, randn(gen, 2, 4, 5, 3, 9)]),
        'dwconv': (lambda v, w: local_aggregate(v, w, 3, 1, 1, groups=6, impl=impl),
                   [v, randn(gen, 6, 9)]),
        'outlook': (lambda v, w: local_aggregate(v, w, 3, 2, 1, groups=3, normalize='softmax',
                                                 fold=True, impl=impl),
                    [v, randn(gen, 2, 4, 5, 3, 9, 9)]),
        'sasa': (lambda q, k, v: local_aggregate(
            v, local_similarity(q, k, 3, groups=3, impl=impl), 3, padding=1, groups=3,
            normalize='softmax', impl=impl), [v, randn(gen, *v.shape), randn(gen, *v.shape)]),
        'clamp': (lambda q, k, v: local_aggregate(
            v, local_similarity(q, k, 3, groups=2, boundary='clamp', impl=impl), 3,
            groups=2, normalize='softmax', boundary='clamp', impl=impl),
            [v, randn(gen, *v.shape), randn(gen, *v.shape)]),
        'deform': (lambda x, o, m: deform_aggregate(x, o, m, 3, 1, 1, impl=impl),
                   [x, off, mask]),
        'deform_fold': (lambda v, w, o: local_aggregate(v, w, 3, 2, 1, groups=3, offset=o,
                                                        normalize='softmax', fold=True,
                                                        impl=impl),
                        list(deform_fold_inputs(gen, (7, 9, 3, 2, 1, 1, 3, 1, 6)))),
    }


@pytest.mark.parametrize('config', ['involution', 'dwconv', 'outlook', 'sasa', 'clamp',
                                    'deform', 'deform_fold'])
def test_fast_independent_of_row_blocks_and_deterministic(config, monkeypatch):
    """One block, one row per block and two rows per block give one result (the blocks'
    sums overlap for fold and deformable); a second run is bitwise identical."""
    fn, inputs = _all_configs('fast')[config]
    results = []
    for elems in (None, '1', '200'):
        if elems is None:
            monkeypatch.delenv(BLOCK_ENV_VAR, raising=False)
        else:
            monkeypatch.setenv(BLOCK_ENV_VAR, elems)
        results.append(value_and_grads(fn, inputs))
    for other in results[1:]:
        assert_equal(other, results[0], 1e-12)
    again = value_and_grads(fn, inputs)
    assert all(torch.equal(a, b) for a, b in zip(again, results[-1]))


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize('config', ['involution', 'dwconv', 'outlook', 'sasa', 'clamp',
                                    'deform', 'deform_fold'])
def test_low_precision_vs_float64(config, dtype):
    """The fast path on fp32 / bf16 inputs vs the fp64 reference on the same rounded inputs:
    values within DTYPE_TOL (relative to the output's scale), output dtype kept."""
    fn_fast, inputs = _all_configs('fast')[config]
    fn_ref, _ = _all_configs('reference')[config]
    low = [t.to(dtype) for t in inputs]
    with torch.no_grad():
        got = fn_fast(*low)
        want = fn_ref(*[t.to(F64) for t in low])
    assert got.dtype == dtype
    err = (got.double() - want).abs().max().item() / max(1.0, want.abs().max().item())
    assert err <= DTYPE_TOL[dtype], err
    out = fn_fast(*[t.requires_grad_() for t in low])
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == dtype for t in low)


CONFIGS = ['involution', 'dwconv', 'outlook', 'sasa', 'clamp', 'deform', 'deform_fold']


@pytest.mark.parametrize('config', CONFIGS)
def test_generic_path_without_special_kernels(config, monkeypatch):
    """The generic block loop serves every configuration (the specialised kernels switched
    off): equal to the reference in float64, values and gradients."""
    import mmvolo.ops.local_aggregate_fast as fast
    fn_ref, inputs = _all_configs('reference')[config]
    want = value_and_grads(fn_ref, inputs)
    monkeypatch.setattr(fast, 'special_kernel', lambda *args: None)
    fn_fast, _ = _all_configs('fast')[config]
    assert_equal(value_and_grads(fn_fast, inputs), want)


def test_special_kernel_per_configuration():
    """Which kernel ``impl='fast'`` runs: conv for static windows, shifted for stride-1
    dynamic ones, chunked for outlook's fold (ceil grid, softmax), else the generic loop."""
    from mmvolo.ops.local_aggregate import make_geometry
    from mmvolo.ops.local_aggregate_kernels import special_kernel
    v = torch.zeros(1, 7, 9, 6)
    off = torch.zeros(1)

    def pick(k=3, s=1, p=1, d=1, boundary='zeros', offset=None, normalize=None, fold=False,
             static=False):
        geom = make_geometry('t', v, k, s, p, d, boundary)
        return special_kernel(geom, offset, normalize, fold, static)

    assert pick(static=True) == pick(static=True, s=2, d=2, normalize='softmax') == 'conv'
    assert pick() == pick(normalize='softmax', d=2, p=2) == 'shifted'
    assert pick(s=2) is None and pick(boundary='clamp') is None and pick(offset=off) is None
    assert pick(s=2, fold=True, normalize='softmax') == 'chunked'
    assert pick(s=2, fold=True) is None and pick(fold=True, normalize='softmax',
                                                 static=True) is None
    assert pick(fold=True, normalize='softmax', p=0) is None  # grid 5x7, not ceil(H/S)
    assert pick(static=True, offset=off) is None


def test_custom_ops_pass_opcheck():
    """torch.library.opcheck (schema, fake kernel, autograd registration, AOT dispatch) on
    the custom ops of the fast path."""
    import mmvolo.ops.local_aggregate_fast as fast
    import mmvolo.ops.local_aggregate_kernels as kernels
    gen = torch.Generator().manual_seed(20)

    def r(*shape):
        return randn(gen, *shape).requires_grad_()

    off = (randn(gen, 1, 3, 4, 1, 9, 2) * 1.3 + 0.21).requires_grad_()
    cases = [  # (op, args): deformable fold, stride 2; clamp, no offset; shifted; similarity
        (fast._aggregate_op, (r(1, 5, 7, 6), r(1, 3, 4, 3, 9, 9), off, 3, 2, 1, 1, 0, 3, 1, 1,
                              0)),
        (fast._aggregate_op, (r(1, 5, 7, 6), r(1, 5, 7, 2, 9), torch.empty(0, dtype=F64), 3, 1,
                              0, 1, 1, 2, 1, 0, 0)),
        (kernels._shifted_op, (r(1, 5, 7, 6), r(1, 5, 7, 3, 9), 3, 1, 1, 3, 1)),
        (fast._similarity_op, (r(1, 5, 7, 6), r(1, 5, 7, 6), 3, 1, 0, 2)),
        (kernels._similarity_op, (r(1, 5, 7, 6), r(1, 5, 7, 6), 3, 2, 3)),
        (kernels._attend_op, (r(1, 5, 7, 6), r(1, 5, 7, 6), r(1, 5, 7, 6), r(1, 5, 7, 2, 3),
                              r(1, 5, 7, 2, 3), 3, 1, 2)),
    ]
    for op, args in cases:
        result = torch.library.opcheck(op, args)
        assert set(result.values()) == {'SUCCESS'}, (op, result)


# ------------------------------------------------------------------------------------------
# Errors and the benchmark tool
# ------------------------------------------------------------------------------------------

def _bad(**over):
    args = dict(value=torch.zeros(1, 5, 7, 6), weight=torch.zeros(1, 5, 7, 3, 9),
                kernel_size=3, padding=1, groups=3)
    args.update(over)
    return args


@pytest.mark.parametrize('kwargs,match', [
    (_bad(value=torch.zeros(5, 7, 6)), r'value must be channels-last \(B, H, W, C\)'),
    (_bad(weight=torch.zeros(1, 5, 7, 3, 8)), r'expected \(B, Ho, Wo, G, K\*K\) = '
                                              r'\(1, 5, 7, 3, 9\) or static \(3, 9\)'),
    (_bad(groups=4), r'channels 6 must divide into groups=4'),
    (_bad(kernel_size=0), r'kernel_size must be an int >= 1'),
    (_bad(stride=0), r'stride must be an int >= 1'),
    (_bad(padding=-1), r'padding must be an int >= 0'),
    (_bad(normalize='sparsemax'), r"normalize must be None or 'softmax'"),
    (_bad(boundary='reflect'), r'boundary must be one of zeros, clamp'),
    (_bad(boundary='clamp', stride=2), r"boundary='clamp' needs stride=1"),
    (_bad(boundary='clamp', kernel_size=9, weight=torch.zeros(1, 5, 7, 3, 81)),
     r'dilation class of the image to hold a window'),
    (_bad(offset=torch.zeros(1, 5, 7, 3, 9)), r'offset must be \(B, Ho, Wo, Go, K\*K, 2\)'),
    (_bad(offset=torch.zeros(1, 5, 7, 4, 9, 2)), r'offset groups Go'),
    (_bad(fold=True), r'expected \(B, Ho, Wo, G, K\*K, K\*K\)'),
    (_bad(kernel_size=9, padding=0, weight=torch.zeros(1, 1, 1, 3, 81)),
     r'does not fit value'),
    (_bad(impl='cupy'), r'unknown impl'),
])
def test_bad_arguments_are_one_line_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        local_aggregate(**kwargs)
    assert '\n' not in str(info.value)


def test_deform_and_similarity_bad_arguments():
    x = torch.zeros(1, 6, 5, 5)
    with pytest.raises(ValueError, match=r'offset must be \(B, 2\*G\*K\*K, Ho, Wo\)'):
        deform_aggregate(x, torch.zeros(1, 17, 5, 5), None, 3, padding=1)
    with pytest.raises(ValueError, match=r'weight \(mask\) must be \(B, G\*K\*K, Ho, Wo\) = '
                                         r'\(1, 9, 5, 5\)'):
        deform_aggregate(x, torch.zeros(1, 18, 5, 5), torch.zeros(1, 8, 5, 5), 3, padding=1)
    with pytest.raises(ValueError, match=r'offset must be \(B, Ho, Wo, Go, K\*K, 2\)'):
        deform_aggregate(x, torch.zeros(1, 18, 4, 5), None, 3, padding=1)
    with pytest.raises(ValueError, match='kernel_size must be an odd int'):
        local_similarity(torch.zeros(1, 5, 5, 4), torch.zeros(1, 5, 5, 4), 4)
    with pytest.raises(ValueError, match='key must have the shape of query'):
        local_similarity(torch.zeros(1, 5, 5, 4), torch.zeros(1, 5, 4, 4), 3)
    with pytest.raises(ValueError, match='DCNv4 offset_mask'):
        dcnv4_to_aggregate(torch.zeros(1, 2, 2, 81), 3, 3)


def _load_benchmark():
    from mmvolo.analysis import benchmark_local_aggregate
    return benchmark_local_aggregate


@pytest.mark.slow(seconds=6)
def test_benchmark_dry_run(capsys):
    records = _load_benchmark().main(['--dry-run'])
    table = capsys.readouterr().out
    assert [r['config'] for r in records] == ['dwconv', 'involution', 'sasa', 'outlook',
                                              'deform']
    for rec in records:
        assert rec['max_abs_diff'] < 1e-4, rec
        assert rec['local_aggregate_fwdbwd_ms'] > 0 and rec['dedicated_peak_mib'] >= 0
    assert '| deform |' in table and 'x fwd+bwd' in table
