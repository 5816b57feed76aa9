"""The local-attention family of token mixers: Involution, LocalSelfAttention, DWConvMixer
(:mod:`mmvolo.models.token_mixers`) and their ops (:mod:`mmvolo.ops.involution`,
:mod:`.local_attention`, :mod:`.dwconv`).

What this pins down:

1. Each op's ``'reference'`` (unfold formula) and ``'fast'`` (per-offset loop / conv2d)
   implementation equals the literal per-pixel loop of ``literal_mixers.py`` in float64
   (values and gradients w.r.t. every input, |diff| <= 1e-10) on tiny sizes; the hand-written
   backward of the involution and local-attention fast paths passes ``gradcheck``.
2. fast == reference in fp32 (values and gradients w.r.t. every input, ``assert_close`` with
   atol = rtol = 1e-5) at odd and non-square sizes (1x1, 5x7, 9x4, 13x13), K in 3, 5, 7,
   with the fast paths' output rows in one block, one row per block and a few rows per block
   ($MMVOLO_WINDOW_BLOCK_ELEMS); 'auto' is 'fast'; fp16/bf16 inputs keep their dtype and stay
   close to fp32.
3. Locality, at module level and exact: perturbing input pixel q changes output pixel p if
   and only if q lies in p's KxK window (every (p, q) pair of a small grid); local attention
   masks out-of-image neighbours (a 1x1 image returns v).
4. Modules: channels_last True/False agree (permuted); shapes preserved at odd sizes;
   defaults fit VOLO-D1 stage 1 (C=192: 12 involution groups, 6 heads); bad arguments are
   one-line ValueErrors; each builds from ``MODELS.build(dict(type=...))``; the benchmark tool
   runs end to end on a tiny size.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from literal_mixers import literal_depthwise_conv, literal_involution, literal_local_attention

from mmvolo.models.token_mixers import DWConvMixer, Involution, LocalSelfAttention
from mmvolo.ops import depthwise_conv, involution, local_attention
from mmvolo.ops.tiling import BLOCK_ENV_VAR, row_blocks
from mmvolo.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
OPS = ['involution', 'local_attention', 'depthwise_conv']
SIZES = [(1, 1), (5, 7), (9, 4), (13, 13)]
KERNELS = [3, 5, 7]
CHANNELS, HEADS, GROUPS = 8, 2, 2


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------

def op_inputs(op: str, height: int, width: int, kernel_size: int, dtype=torch.float32,
              batch: int = 2, channels: int = CHANNELS, seed: int = 0) -> list[torch.Tensor]:
    """Random inputs of ``op`` (the tensors only) for one case."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    tokens = (batch, height, width, channels)
    if op == 'involution':
        return [randn(*tokens), randn(batch, height, width, GROUPS * kernel_size ** 2)]
    if op == 'local_attention':
        half = channels // HEADS // 2
        return [randn(*tokens), randn(*tokens), randn(*tokens), randn(kernel_size, half),
                randn(kernel_size, half)]
    return [randn(*tokens), randn(channels, 1, kernel_size, kernel_size), randn(channels)]


def call_op(op: str, impl: str | None, tensors: list[torch.Tensor],
            kernel_size: int) -> torch.Tensor:
    if op == 'involution':
        return involution(*tensors, kernel_size, GROUPS, impl=impl)
    if op == 'local_attention':
        return local_attention(*tensors, HEADS, kernel_size, impl=impl)
    return depthwise_conv(*tensors, impl=impl)


def call_literal(op: str, tensors: list[torch.Tensor], kernel_size: int) -> torch.Tensor:
    if op == 'involution':
        return literal_involution(*tensors, kernel_size, GROUPS)
    if op == 'local_attention':
        return literal_local_attention(*tensors, HEADS, kernel_size)
    return literal_depthwise_conv(*tensors)


def value_and_grads(fn, tensors: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    """[out, grad w.r.t. each tensor] of ``fn(tensors)`` for a random upstream gradient."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(leaves)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    return [out.detach(), *torch.autograd.grad(out, leaves, grad)]


def build_mixer(name: str, kernel_size: int = 3, **kwargs) -> torch.nn.Module:
    cfg = dict(type=name, embed_dims=CHANNELS, kernel_size=kernel_size, **kwargs)
    cfg.update(dict(Involution=dict(groups=GROUPS), LocalSelfAttention=dict(num_heads=HEADS),
                    DWConvMixer={})[name])
    return MODELS.build(cfg)


MIXERS = ['Involution', 'LocalSelfAttention', 'DWConvMixer']


# ------------------------------------------------------------------------------------------
# Ops: literal oracle, gradcheck, fast vs reference
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('impl', ['reference', 'fast'])
@pytest.mark.parametrize('height,width,kernel_size', [(1, 1, 3), (3, 4, 3), (4, 2, 5),
                                                      (2, 5, 7)])
@pytest.mark.parametrize('op', OPS)
def test_ops_match_literal_loops_float64(op, height, width, kernel_size, impl):
    tensors = op_inputs(op, height, width, kernel_size, torch.float64, batch=1)
    want = value_and_grads(lambda t: call_literal(op, t, kernel_size), tensors)
    got = value_and_grads(lambda t: call_op(op, impl, t, kernel_size), tensors)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == torch.float64
        assert (g - w).abs().max().item() <= 1e-10


@pytest.mark.parametrize('block_elems', [None, '1'], ids=['one-block', 'row-blocks'])
@pytest.mark.parametrize('op', ['involution', 'local_attention'])  # hand-written backward
def test_fast_backward_gradcheck_float64(op, block_elems, monkeypatch):
    if block_elems is not None:
        monkeypatch.setenv(BLOCK_ENV_VAR, block_elems)
    tensors = [t.requires_grad_() for t in op_inputs(op, 3, 4, 3, torch.float64, batch=1,
                                                      channels=4)]
    assert torch.autograd.gradcheck(lambda *t: call_op(op, 'fast', list(t), 3), tensors)


@pytest.mark.parametrize('block_elems', [None, '1', '100'], ids=['default', 'row', 'rows'])
@pytest.mark.parametrize('kernel_size', KERNELS)
@pytest.mark.parametrize('height,width', SIZES)
@pytest.mark.parametrize('op', OPS)
def test_fast_matches_reference_fp32(op, height, width, kernel_size, block_elems, monkeypatch):
    if block_elems is not None:  # one output row per block / a few rows per block
        monkeypatch.setenv(BLOCK_ENV_VAR, block_elems)
    tensors = op_inputs(op, height, width, kernel_size)
    want = value_and_grads(lambda t: call_op(op, 'reference', t, kernel_size), tensors)
    got = value_and_grads(lambda t: call_op(op, 'fast', t, kernel_size), tensors)
    auto = call_op(op, 'auto', tensors, kernel_size)
    torch.testing.assert_close(auto, got[0], rtol=0, atol=0)  # 'auto' is 'fast'
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_row_blocks_cover_the_rows_once(monkeypatch):
    x = torch.empty(2, 13, 5, 8)
    assert row_blocks(x) == [(0, 13)]
    monkeypatch.setenv(BLOCK_ENV_VAR, str(2 * 5 * 8 * 4))  # four rows of x
    assert row_blocks(x) == [(0, 4), (4, 8), (8, 12), (12, 13)]
    monkeypatch.delenv(BLOCK_ENV_VAR)
    big = torch.empty(2, 128, 256, 192, device='meta')  # D1 stage 1, 1024x2048: 6 blocks
    blocks = row_blocks(big)
    assert len(blocks) == 6 and blocks[-1][1] == 128
    assert len(row_blocks(torch.empty(64, 128, 256, 192, device='meta'))) == 8  # at most 8


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('op', OPS)
def test_fast_low_precision_close_to_fp32(op, dtype):
    tensors = op_inputs(op, 5, 6, 3, dtype)
    want = value_and_grads(lambda t: call_op(op, 'reference', t, 3),
                           [t.float() for t in tensors])
    got = value_and_grads(lambda t: call_op(op, 'fast', t, 3), tensors)
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-2
    for g, w in zip(got, want):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), w, rtol=tol, atol=tol)


@pytest.mark.parametrize('impl', ['reference', 'fast'])
def test_local_attention_masks_outside_neighbours(impl):
    """A 1x1 image has one neighbour inside: attention weight 1 on it, whatever q.k+r of the
    zero-padded positions would be."""
    q, k, v, rel_h, rel_w = op_inputs('local_attention', 1, 1, 7)
    out = local_attention(q * 10, k, v, rel_h * 10, rel_w * 10, HEADS, 7, impl=impl)
    torch.testing.assert_close(out, v, rtol=0, atol=1e-6)


def test_fast_paths_save_no_unfolded_tensor():
    """Autograd keeps only the inputs (and, for local attention, K*K weights per head): every
    tensor any node of the graph saves, counted once per storage, inputs' storages aside."""
    height, width, kernel_size = 6, 5, 7
    numel = {}
    for op in ('involution', 'local_attention'):
        tensors = [t.requires_grad_() for t in op_inputs(op, height, width, kernel_size)]
        inputs = {t.untyped_storage().data_ptr() for t in tensors}
        saved = {}

        def pack(t, saved=saved, inputs=inputs):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in inputs:
                saved[ptr] = t.untyped_storage().nbytes() // t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            call_op(op, 'fast', tensors, kernel_size)
        numel[op] = sum(saved.values())
    assert numel['involution'] == 0
    # the softmax weights (K*K per pixel and head) and the two relative terms q . rel_h,
    # q . rel_w (K each)
    per_head = 2 * height * width * HEADS
    assert numel['local_attention'] == per_head * kernel_size ** 2 + 2 * per_head * kernel_size


@pytest.mark.parametrize('op,args,match', [
    ('involution', dict(impl='triton'), 'unknown impl'),
    ('involution', dict(kernel_size=4), 'odd'),
    ('involution', dict(groups=3), 'groups'),
    ('local_attention', dict(num_heads=3), 'num_heads'),
    ('local_attention', dict(num_heads=8), 'even'),
    ('depthwise_conv', dict(weight_shape=(8, 2, 3, 3)), r'\(C, 1, K, K\)'),
])
def test_op_bad_arguments_one_line_value_error(op, args, match):
    tensors = op_inputs(op, 4, 4, 3)
    impl = args.get('impl', 'auto')
    with pytest.raises(ValueError, match=match) as info:
        if op == 'involution':
            involution(*tensors, args.get('kernel_size', 3), args.get('groups', GROUPS),
                       impl=impl)
        elif op == 'local_attention':
            local_attention(*tensors, args['num_heads'], 3)
        else:
            depthwise_conv(tensors[0], torch.zeros(args['weight_shape']))
    assert '\n' not in str(info.value)


# ------------------------------------------------------------------------------------------
# Modules: locality
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('impl', ['auto', 'reference'])
@pytest.mark.parametrize('name,kernel_size', [('Involution', 3), ('LocalSelfAttention', 3),
                                              ('LocalSelfAttention', 5), ('DWConvMixer', 3)])
def test_output_depends_exactly_on_the_window(name, kernel_size, impl):
    """Perturbing input pixel q changes output p iff q is in p's window (exact equality
    elsewhere), for every pair (p, q) of a 6x7 grid."""
    height, width, pad = 6, 7, kernel_size // 2
    module = build_mixer(name, kernel_size, impl=impl).double().eval()
    x = torch.randn(1, height, width, CHANNELS, dtype=torch.float64)
    with torch.no_grad():
        base = module(x)
        for i in range(height):
            for j in range(width):
                bumped = x.clone()
                bumped[0, i, j] += torch.linspace(1, 2, CHANNELS, dtype=torch.float64)
                changed = (module(bumped) != base).any(dim=-1)[0]  # (H, W)
                rows = torch.arange(height)[:, None]
                cols = torch.arange(width)[None, :]
                window = ((rows - i).abs() <= pad) & ((cols - j).abs() <= pad)
                assert torch.equal(changed, window), (name, i, j)


# ------------------------------------------------------------------------------------------
# Modules: interface
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', MIXERS)
def test_channels_first_equals_channels_last(name):
    module = build_mixer(name)
    nchw = build_mixer(name, channels_last=False)
    nchw.load_state_dict(module.state_dict())
    x = torch.randn(2, 5, 7, CHANNELS)
    out = nchw(x.permute(0, 3, 1, 2))
    assert out.shape == (2, CHANNELS, 5, 7)
    torch.testing.assert_close(out.permute(0, 2, 3, 1), module(x), rtol=0, atol=0)


@pytest.mark.parametrize('height,width', [(1, 1), (5, 7), (9, 4), (3, 1)])
@pytest.mark.parametrize('name', MIXERS)
def test_shape_preserved_and_trains(name, height, width):
    module = build_mixer(name, 5)
    x = torch.randn(2, height, width, CHANNELS, requires_grad=True)
    out = module(x)
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in module.parameters())


@pytest.mark.parametrize('name', MIXERS)
def test_impls_agree_at_module_level(name):
    fast = build_mixer(name, 5, impl='fast')
    reference = build_mixer(name, 5, impl='reference')
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(2, 6, 9, CHANNELS)
    torch.testing.assert_close(fast(x), reference(x), rtol=1e-5, atol=1e-5)


def test_defaults_fit_volo_d1_stage1():
    involution_mixer = Involution(192)
    attention = LocalSelfAttention(192)
    conv = DWConvMixer(192)
    assert (involution_mixer.kernel_size, involution_mixer.groups) == (3, 12)
    assert involution_mixer.span.out_features == 12 * 9
    assert involution_mixer.reduce.out_features == 48
    assert (attention.kernel_size, attention.num_heads) == (7, 6)
    assert attention.rel_h.shape == attention.rel_w.shape == (7, 16)
    assert conv.dwconv.weight.shape == (192, 1, 3, 3)
    for module in (involution_mixer, attention, conv):
        assert isinstance(module.proj, torch.nn.Linear)
        assert module.proj.in_features == module.proj.out_features == 192
    assert attention.qkv.out_features == 3 * 192


@pytest.mark.parametrize('name,kwargs,match', [
    ('Involution', dict(stride=2), 'stride=1'),
    ('Involution', dict(kernel_size=4), 'odd'),
    ('Involution', dict(groups=3), 'groups'),
    ('Involution', dict(embed_dims=24), 'groups=G'),  # default groups: 16 channels each
    ('Involution', dict(reduction=0), 'reduction'),
    ('Involution', dict(impl='cuda'), 'unknown impl'),
    ('LocalSelfAttention', dict(stride=2), 'stride=1'),
    ('LocalSelfAttention', dict(num_heads=3), 'num_heads'),
    ('LocalSelfAttention', dict(num_heads=8), 'even'),
    ('LocalSelfAttention', dict(kernel_size=0), 'odd'),
    ('DWConvMixer', dict(stride=2), 'stride=1'),
    ('DWConvMixer', dict(kernel_size=2), 'odd'),
    ('DWConvMixer', dict(embed_dims=0), 'embed_dims'),
])
def test_bad_arguments_one_line_value_error(name, kwargs, match):
    cfg = dict(type=name, embed_dims=CHANNELS)
    if name == 'Involution':
        cfg['groups'] = GROUPS
    if name == 'Involution' and 'embed_dims' in kwargs:
        del cfg['groups']
    cfg.update(kwargs)
    with pytest.raises(ValueError, match=match) as info:
        MODELS.get(name)(**{k: v for k, v in cfg.items() if k != 'type'})
    assert '\n' not in str(info.value)


@pytest.mark.parametrize('name', MIXERS)
def test_wrong_input_rank_is_a_value_error(name):
    with pytest.raises(ValueError, match='4-d'):
        build_mixer(name)(torch.randn(2, 5, CHANNELS))


@pytest.mark.parametrize('name', MIXERS)
def test_registered_and_built_from_config(name):
    from mmseg.registry import MODELS as SEG_MODELS

    module = MODELS.build(dict(type=name, embed_dims=32))
    assert type(module).__name__ == name and module.embed_dims == 32
    assert SEG_MODELS.get(name) is MODELS.get(name)


# ------------------------------------------------------------------------------------------
# The benchmark tool
# ------------------------------------------------------------------------------------------

def _benchmark_module():
    from mmvolo.analysis import benchmark_mixers
    return benchmark_mixers


def test_benchmark_runs_on_a_tiny_size(tmp_path, capsys):
    bench = _benchmark_module()
    out = tmp_path / 'bench.json'
    threads = torch.get_num_threads()
    try:  # one thread: tiny ops are dominated by thread wake-ups on a loaded machine
        bench.main(['--device', 'cpu', '--sizes', '64x48', '--op-sizes', '64x48', '--batch',
                    '1', '--op-batch', '1', '--repeats', '1', '--warmup', '0', '--threads',
                    '1', '--json', str(out)])
    finally:
        torch.set_num_threads(threads)
    records = json.loads(out.read_text())
    mixers = {r['name'] for r in records if r['section'] == 'module'}
    assert mixers == {'OutlookAttention', 'Involution', 'LocalSelfAttention', 'DWConvMixer'}
    ops = {(r['name'], r['impl']) for r in records if r['section'] == 'op'}
    assert ('local_attention', 'fast') in ops and ('involution', 'reference') in ops
    assert all(r['fwd_ms'] > 0 and r['peak_mib'] >= 0 for r in records)
    assert '| OutlookAttention |' in capsys.readouterr().out


def test_benchmark_bad_arguments_are_usage_errors(tmp_path):
    from mmvolo.cli import UsageError

    bench = _benchmark_module()
    for argv, match in ((['--batch', '0'], '--batch'), (['--sizes', '64'], '--sizes'),
                        (['--json', str(tmp_path / 'missing' / 'x.json')], 'does not exist')):
        with pytest.raises(UsageError, match=match):
            bench.parse_args(['--device', 'cpu', *argv])
