"""Layer-wise lr decay constructor, and the params/FLOPs helper, on a tiny UperNet-VOLO."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, init_default_scope
from tool_helpers import run_tool_in_process

import mmvolo  # noqa: F401  (registers VOLO and the constructor)
from mmvolo.engine import VOLOLayerDecayOptimWrapperConstructor, plan_layer_decay
from mmvolo.utils import build_model_for_analysis, measure_complexity

ROOT = Path(__file__).resolve().parents[1]
D1_ADE = ROOT / 'configs' / 'volo' / 'volo-d1_upernet_8xb2-160k_ade20k-512x512.py'
TINY_ARCH = dict(layers=(1, 1, 2, 1), embed_dims=(16, 32, 32, 32), num_heads=(2, 2, 2, 2),
                 stem_hidden_dims=8)
NUM_BLOCKS = 5
LR, WD, RATE = 1e-4, 0.05, 0.9


def tiny_model_cfg() -> Config:
    """The D1 ADE20K config with the backbone shrunk to TINY_ARCH (same structure)."""
    cfg = Config.fromfile(str(D1_ADE))
    cfg.merge_from_dict({
        'model.backbone.arch': dict(_delete_=True, **TINY_ARCH),
        'model.backbone.img_size': 64,
        'model.backbone.init_cfg': None,
        'model.decode_head.in_channels': [16, 16, 32, 32],
        'model.decode_head.channels': 16,
        'model.auxiliary_head.in_channels': 32,
        'model.auxiliary_head.channels': 8,
    })
    return cfg


@pytest.fixture(scope='module')
def tiny_cfg() -> Config:
    return tiny_model_cfg()


@pytest.fixture
def segmentor(tiny_cfg):
    init_default_scope('mmseg')
    return revert_sync_batchnorm(MODELS.build(tiny_cfg.model))


def build(model, **paramwise):
    constructor = VOLOLayerDecayOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=LR, weight_decay=WD)),
        dict(layer_decay_rate=RATE, **paramwise))
    return constructor(model)


def group_of(wrapper) -> dict[int, dict]:
    """id(param) -> its param group."""
    return {id(p): group for group in wrapper.optimizer.param_groups for p in group['params']}


def test_lr_scale_per_layer_id(segmentor):
    wrapper = build(segmentor)
    groups = group_of(wrapper)
    params = dict(segmentor.named_parameters())
    top = NUM_BLOCKS + 1
    for group in wrapper.optimizer.param_groups:
        assert group['lr'] == pytest.approx(LR * RATE ** (top - group['layer_id']))
    stem = groups[id(params['backbone.patch_embed.conv.0.weight'])]
    assert stem['layer_id'] == 0 and stem['lr'] == pytest.approx(LR * RATE ** top)
    assert groups[id(params['backbone.pos_embed'])]['layer_id'] == 0
    blocks = ['backbone.network.0.0.attn.v.weight', 'backbone.network.2.0.attn.qkv.weight',
              'backbone.network.3.0.attn.qkv.weight', 'backbone.network.3.1.mlp.fc1.weight',
              'backbone.network.4.0.mlp.fc2.weight']
    assert [groups[id(params[name])]['layer_id'] for name in blocks] == [1, 2, 3, 4, 5]
    assert groups[id(params['backbone.network.1.proj.weight'])]['layer_id'] == 2
    for name in ('decode_head.conv_seg.weight', 'auxiliary_head.conv_seg.weight',
                 'backbone.out_norms.0.weight', 'backbone.upsample.weight'):
        assert groups[id(params[name])]['lr'] == pytest.approx(LR), name
    lrs = [group['lr'] for group in wrapper.optimizer.param_groups]
    assert min(lrs) == pytest.approx(stem['lr']) and max(lrs) == pytest.approx(LR)


def test_no_weight_decay_on_pos_embed_norms_biases(segmentor):
    groups = group_of(build(segmentor))
    for name, param in segmentor.named_parameters():
        no_decay = param.ndim <= 1 or name == 'backbone.pos_embed'
        assert groups[id(param)]['weight_decay'] == (0. if no_decay else WD), name
    params = dict(segmentor.named_parameters())
    for name in ('backbone.network.0.0.norm1.weight', 'backbone.out_norms.3.bias',
                 'decode_head.bottleneck.bn.weight', 'backbone.patch_embed.conv.1.weight'):
        assert groups[id(params[name])]['weight_decay'] == 0., name
    assert groups[id(params['backbone.network.3.0.mlp.fc1.weight'])]['weight_decay'] == WD


def test_no_decay_keys(segmentor):
    groups = group_of(build(segmentor, no_decay_keys=('conv_seg',)))
    params = dict(segmentor.named_parameters())
    assert groups[id(params['decode_head.conv_seg.weight'])]['weight_decay'] == 0.


def test_custom_keys_multiply_the_decayed_lr_and_set_decay(segmentor):
    """mmengine's custom_keys on top of layer decay: the longest matching substring wins."""
    wrapper = build(segmentor, custom_keys={'decode_head': dict(lr_mult=10.),
                                            'decode_head.conv_seg': dict(lr_mult=2.,
                                                                         decay_mult=0.5),
                                            'pos_embed': dict(decay_mult=0.)})
    groups, params = group_of(wrapper), dict(segmentor.named_parameters())
    plain = group_of(build(segmentor))
    head = params['decode_head.bottleneck.conv.weight']
    assert groups[id(head)]['lr'] == pytest.approx(10 * plain[id(head)]['lr'])
    seg = params['decode_head.conv_seg.weight']
    assert groups[id(seg)]['lr'] == pytest.approx(2 * plain[id(seg)]['lr'])
    assert groups[id(seg)]['weight_decay'] == pytest.approx(0.5 * WD)
    assert groups[id(params['decode_head.conv_seg.bias'])]['weight_decay'] == pytest.approx(
        0.5 * WD)  # decay_mult overrides the no-decay rule for 1-D params
    stem = params['backbone.pos_embed']
    assert groups[id(stem)]['lr'] == pytest.approx(plain[id(stem)]['lr'])
    assert groups[id(stem)]['weight_decay'] == 0.


def test_every_trainable_param_in_exactly_one_group(segmentor):
    segmentor.backbone.patch_embed.requires_grad_(False)
    wrapper = build(segmentor)
    grouped = [id(p) for group in wrapper.optimizer.param_groups for p in group['params']]
    trainable = [id(p) for p in segmentor.parameters() if p.requires_grad]
    assert len(grouped) == len(set(grouped)) == len(trainable)
    assert set(grouped) == set(trainable)
    assert sum(p.numel() for group in wrapper.optimizer.param_groups
               for p in group['params']) == sum(p.numel() for p in segmentor.parameters()
                                                if p.requires_grad)


def test_bare_backbone_and_wrapped_model(segmentor):
    backbone_groups = build(segmentor.backbone).optimizer.param_groups
    assert {group['layer_id'] for group in backbone_groups} == set(range(NUM_BLOCKS + 2))
    wrapped = torch.nn.Module()
    wrapped.module = segmentor  # as DDP holds it
    assert len(build(wrapped).optimizer.param_groups) == len(build(segmentor)
                                                             .optimizer.param_groups)


def test_config_driven_build_under_mmseg_scope(segmentor, tiny_cfg):
    init_default_scope('mmseg')
    from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS

    assert (OPTIM_WRAPPER_CONSTRUCTORS.get('VOLOLayerDecayOptimWrapperConstructor')
            is VOLOLayerDecayOptimWrapperConstructor)
    wrapper = build_optim_wrapper(segmentor, tiny_cfg.optim_wrapper)
    optimizer = wrapper.optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    base = tiny_cfg.optim_wrapper.optimizer
    rate = tiny_cfg.optim_wrapper.paramwise_cfg.layer_decay_rate
    for group in optimizer.param_groups:
        assert group['lr'] == pytest.approx(base.lr * rate ** (NUM_BLOCKS + 1 - group['layer_id']))


def test_schedulers_keep_the_layer_ratios(segmentor, tiny_cfg):
    from mmengine.optim.scheduler import LinearLR, PolyLR

    wrapper = build_optim_wrapper(segmentor, tiny_cfg.optim_wrapper)
    warmup = LinearLR(wrapper, start_factor=1e-6, by_epoch=False, begin=0, end=10)
    poly = PolyLR(wrapper, eta_min=0., power=1., by_epoch=False, begin=10, end=20)
    for _ in range(14):
        wrapper.step(), warmup.step(), poly.step()
    groups = wrapper.optimizer.param_groups
    top = max(groups, key=lambda group: group['layer_id'])
    for group in groups:
        assert group['lr'] / top['lr'] == pytest.approx(group['lr_scale'])


def test_plan_and_errors(segmentor):
    plan = plan_layer_decay(segmentor)
    assert plan.num_layer_ids == NUM_BLOCKS + 2
    with pytest.raises(TypeError, match='get_layer_depth'):
        build(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"custom_keys\['norm'\]: unsupported \['momentum'\]"):
        build(segmentor, custom_keys={'norm': dict(momentum=0.)})
    with pytest.raises(ValueError, match='unsupported paramwise_cfg keys'):
        build(segmentor, bias_decay_mult=0.)
    with pytest.raises(ValueError, match='layer_decay_rate'):
        VOLOLayerDecayOptimWrapperConstructor(
            dict(optimizer=dict(type='AdamW', lr=LR)), dict(layer_decay_rate=1.5))


# ------------------------------------------------------------------------------ complexity
def test_complexity_of_a_tiny_config(tiny_cfg):
    from mmengine.analysis import get_model_complexity_info

    model = build_model_for_analysis(tiny_cfg)
    result = measure_complexity(model, (64, 64))
    assert result.flops > 0 and result.params > 0
    assert result.params == sum(p.numel() for p in model.parameters())
    assert set(result.params_by_module) == {'backbone', 'decode_head', 'auxiliary_head'}
    assert 'aten::im2col' in result.uncounted_ops  # the unfold of outlook attention
    assert 'aten::scaled_dot_product_attention' not in result.uncounted_ops
    reference = get_model_complexity_info(model, inputs=(torch.rand(1, 3, 64, 64),),
                                          show_table=False, show_arch=False)
    assert reference['params'] == result.params
    # mmengine alone misses self-attention (SDPA); our count adds exactly QK^T + AV
    assert result.flops > reference['flops']
    tokens, dim, blocks = (64 // 16) ** 2, 32, 4
    assert result.flops - reference['flops'] == blocks * 2 * tokens * tokens * dim
    assert 'FLOPs' in result.summary()


def test_complexity_counts_the_outlook_matmul(tiny_cfg):
    reference = measure_complexity(build_model_for_analysis(tiny_cfg), (64, 64))
    opaque = build_model_for_analysis(tiny_cfg)
    for module in opaque.modules():
        if hasattr(module, 'impl'):
            module.impl = 'chunked'  # the default CPU kernel, a custom op the counter skips
    skipped = measure_complexity(opaque, (64, 64))
    positions, window, channels = (64 // 16) ** 2, 3 * 3, 16  # stride-2 grid of 8x8 tokens
    assert reference.flops - skipped.flops == positions * window * window * channels


def test_get_flops_cli(tiny_cfg, tmp_path, capsys):
    path = tmp_path / 'tiny.py'
    tiny_cfg.dump(str(path))
    result = run_tool_in_process('analysis/get_flops.py', path, '--shape', 64, 96, capsys=capsys)
    assert result.returncode == 0, result.stderr
    assert 'Input shape: 64x96' in result.stdout
    assert 'FLOPs' in result.stdout and 'Params' in result.stdout


def test_first_group_is_at_the_base_lr(segmentor):
    """mmengine logs the first group's lr: it should be the base lr (heads)."""
    first = build(segmentor).optimizer.param_groups[0]
    assert first['lr'] == pytest.approx(LR) and first['layer_id'] == NUM_BLOCKS + 1
