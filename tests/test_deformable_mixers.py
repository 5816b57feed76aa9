"""DeformableOutlook and DCNv3Mixer (issue #23, section 5).

Pins down, in float64 on CPU:
* shapes at odd sizes, stride 2 and 3 (VOLO's ceil grid), channels-first, dilation 2;
* at init (zero offsets) DeformableOutlook equals OutlookAttention with the same weights
  (values and gradients), inside VOLO too; DCNv3Mixer with zero offsets equals an unfold /
  softmax computation;
* with non-zero offsets both equal oracles built on ``torchvision.ops.deform_conv2d`` (and
  F.fold for outlook's scatter), values and the offset predictor's gradients, so the offsets
  are read where the docstrings say;
* bad arguments: one line each, naming the module, the argument and the rule;
* VOLO(TINY_ARCH) and MixerNeck with each mixer build, keep the predictors at zero through
  init_weights, run forward/backward, reload from a state_dict file, and compile with 0
  graph breaks (compiled fwd+bwd equal to eager);
* the ablation and ADE20K configs build the mixer they name and change nothing else.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from compile_checks import assert_compiles_like_eager
from mmengine.config import Config

from mmvolo.models import VOLO, DCNv3Mixer, DeformableOutlook, MixerNeck, OutlookAttention
from mmvolo.models.arch_zoo import TINY_ARCH
from mmvolo.utils import build_model_for_analysis

tv_ops = pytest.importorskip('torchvision.ops')

# mmseg's own deprecation, raised when the config tests build the decode head's loss
pytestmark = pytest.mark.filterwarnings('ignore:``build_loss`` would be deprecated')

ROOT = Path(__file__).resolve().parents[1]
ADE_CONFIG = ROOT / 'configs' / 'deformable' / \
    'volo-d1-deformable-outlook_upernet_8xb2-160k_ade20k-512x512.py'
D1_ADE = ROOT / 'configs' / 'volo' / 'volo-d1_upernet_8xb2-160k_ade20k-512x512.py'
ABLATION = {'DeformableOutlook': ROOT / 'configs' / 'ablation' /
            'volo-toy-deformable-outlook_upernet_1xb2-800iter_toy-64x64.py',
            'DCNv3Mixer': ROOT / 'configs' / 'ablation' /
            'volo-toy-dcnv3_upernet_1xb2-800iter_toy-64x64.py'}
MIXERS = ['DeformableOutlook', 'DCNv3Mixer']


def is_predictor(name: str) -> bool:
    """A parameter of an offset or mask predictor (``...offset.weight``, ``...mask.bias``)."""
    return name.split('.')[-2:-1] in (['offset'], ['mask'])


def randomise_offsets(module: torch.nn.Module, std: float = .3) -> None:
    """Draw every offset/mask predictor away from zero (a trained model's state)."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if is_predictor(name):
                param.normal_(0, std)


def deform_samples(value: torch.Tensor, offset: torch.Tensor, kernel_size: int, stride: int,
                   padding: int, dilation: int = 1) -> torch.Tensor:
    """Oracle samples (B, C, K*K, Ho, Wo) of value (B, H, W, C) at the window tap k plus
    offset (B, Ho, Wo, Go, K*K, 2): torchvision's deform_conv2d with a one-hot depthwise
    kernel per tap."""
    batch, _, _, channels = value.shape
    taps = kernel_size * kernel_size
    nchw = value.permute(0, 3, 1, 2)
    off = offset.permute(0, 3, 4, 5, 1, 2).reshape(batch, -1, *offset.shape[1:3])
    samples = []
    for k in range(taps):
        kernel = value.new_zeros(channels, 1, taps)
        kernel[:, :, k] = 1
        samples.append(tv_ops.deform_conv2d(
            nchw, off, kernel.view(channels, 1, kernel_size, kernel_size), stride=stride,
            padding=padding, dilation=dilation))
    return torch.stack(samples, dim=2)


def outlook_oracle(module: DeformableOutlook, x: torch.Tensor) -> torch.Tensor:
    """DeformableOutlook's formula from deform_conv2d samples, a softmax and F.fold."""
    batch, height, width, channels = x.shape
    k, s, p, heads = module.kernel_size, module.stride, module.padding, module.num_heads
    pooled = x if s == 1 else F.avg_pool2d(x.permute(0, 3, 1, 2), s, s, ceil_mode=True
                                           ).permute(0, 2, 3, 1)
    out_h, out_w = pooled.shape[1:3]
    attn = (F.linear(pooled, module.attn.weight, module.attn.bias) * module.scale)
    attn = attn.view(batch, out_h, out_w, heads, k * k, k * k).softmax(-1)
    offset = F.linear(pooled, module.offset.weight, module.offset.bias) * module.offset_scale
    offset = offset.view(batch, out_h, out_w, module.offset_groups, k * k, 2)
    value = F.linear(x, module.v.weight, module.v.bias)
    samples = deform_samples(value, offset, k, s, p)  # (B, C, K*K, Ho, Wo)
    samples = samples.view(batch, heads, channels // heads, k * k, out_h, out_w)
    windows = torch.einsum('bijhoq,bhdqij->bhdoij', attn, samples)  # (B, h, d, K*K, Ho, Wo)
    folded = F.fold(windows.reshape(batch, channels * k * k, out_h * out_w), (height, width),
                    k, padding=p, stride=s)
    return F.linear(folded.permute(0, 2, 3, 1), module.proj.weight, module.proj.bias)


def dcnv3_oracle(module: DCNv3Mixer, x: torch.Tensor, use_offsets: bool) -> torch.Tensor:
    """DCNv3Mixer's formula: unfold (zero offsets) or deform_conv2d with the softmaxed mask
    as torchvision's ``mask`` and a kernel of ones."""
    batch, height, width, channels = x.shape
    k, d, groups = module.kernel_size, module.dilation, module.groups
    value = F.linear(x, module.input_proj.weight, module.input_proj.bias).permute(0, 3, 1, 2)
    feats = module.dw_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    feats = F.gelu(F.layer_norm(feats, (channels,), module.dw_norm.weight, module.dw_norm.bias))
    mask = F.linear(feats, module.mask.weight, module.mask.bias)
    mask = mask.view(batch, height, width, groups, k * k).softmax(-1)
    if use_offsets:
        offset = F.linear(feats, module.offset.weight, module.offset.bias) * module.offset_scale
        offset = offset.view(batch, height, width, groups, k * k, 2)
        off = offset.permute(0, 3, 4, 5, 1, 2).reshape(batch, -1, height, width)
        ones = value.new_ones(channels, 1, k, k)
        out = tv_ops.deform_conv2d(value, off, ones, padding=d * (k // 2), dilation=d,
                                   mask=mask.permute(0, 3, 4, 1, 2).reshape(
                                       batch, -1, height, width))
        out = out.permute(0, 2, 3, 1)
    else:
        windows = F.unfold(value, k, dilation=d, padding=d * (k // 2))
        windows = windows.view(batch, groups, channels // groups, k * k, height, width)
        out = torch.einsum('bijgq,bgcqij->bijgc', mask, windows).reshape(
            batch, height, width, channels)
    return F.linear(out, module.output_proj.weight, module.output_proj.bias)


# ------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize('size', [(7, 9), (1, 1), (5, 2), (8, 8)])
@pytest.mark.parametrize('stride', [1, 2, 3])
def test_deformable_outlook_keeps_shape_on_the_ceil_grid(size, stride):
    module = DeformableOutlook(12, num_heads=3, stride=stride, offset_groups=2)
    randomise_offsets(module)
    x = torch.randn(2, *size, 12)
    assert module(x).shape == x.shape
    grid = tuple(-(-n // stride) for n in size)
    assert module.offsets(module.pooled(x)).shape == (2, *grid, 2, 9, 2)


@pytest.mark.parametrize('size', [(7, 9), (1, 1), (5, 2)])
@pytest.mark.parametrize('dilation', [1, 2])
def test_dcnv3_keeps_shape(size, dilation):
    module = DCNv3Mixer(12, groups=3, dilation=dilation)
    randomise_offsets(module)
    x = torch.randn(2, *size, 12)
    assert module(x).shape == x.shape


@pytest.mark.parametrize('mixer', MIXERS)
def test_channels_first_is_the_channels_last_result(mixer):
    kwargs = dict(num_heads=2) if mixer == 'DeformableOutlook' else dict(groups=2)
    last = globals()[mixer](8, **kwargs)
    randomise_offsets(last)
    first = copy.deepcopy(last)
    first.channels_last = False
    x = torch.randn(2, 5, 7, 8)
    torch.testing.assert_close(first(x.permute(0, 3, 1, 2)), last(x).permute(0, 3, 1, 2))


# ------------------------------------------------------------------------------ oracles
@pytest.mark.parametrize('stride,size', [(1, (5, 7)), (2, (7, 9)), (2, (8, 6)), (3, (7, 5))])
def test_deformable_outlook_at_init_is_outlook_attention(stride, size):
    deform = DeformableOutlook(12, num_heads=3, stride=stride, qkv_bias=True).double()
    outlook = OutlookAttention(12, num_heads=3, stride=stride, qkv_bias=True,
                               impl='reference').double()
    missing = outlook.load_state_dict(deform.state_dict(), strict=False)
    assert missing.missing_keys == [] and missing.unexpected_keys == ['offset.weight',
                                                                      'offset.bias']
    x = torch.randn(2, *size, 12, dtype=torch.float64, requires_grad=True)
    got, want = deform(x), outlook(x)
    assert (got - want).abs().max() <= 1e-6
    grad = torch.randn_like(got)
    got_grads = torch.autograd.grad(got, [x, *deform.v.parameters(), deform.attn.weight], grad)
    want_grads = torch.autograd.grad(want, [x, *outlook.v.parameters(), outlook.attn.weight],
                                     grad)
    for g, w in zip(got_grads, want_grads):
        assert (g - w).abs().max() <= 1e-6
    # the offset predictor gets a gradient at init (it can move away from zero)
    (deform(x) * grad).sum().backward()
    assert deform.offset.weight.grad.abs().max() > 0


@pytest.mark.parametrize('impl', ['reference', 'fast'])
@pytest.mark.parametrize('stride,size,groups', [(1, (5, 7), 3), (2, (7, 9), 1), (2, (6, 5), 3)])
def test_deformable_outlook_with_offsets_matches_deform_conv_oracle(impl, stride, size,
                                                                    groups):
    module = DeformableOutlook(12, num_heads=3, stride=stride, offset_groups=groups,
                               offset_scale=2., impl=impl).double()
    randomise_offsets(module, std=.5)
    x = torch.randn(2, *size, 12, dtype=torch.float64)
    offset = module.offsets(module.pooled(x))
    assert offset.abs().max() > 1  # far enough to leave the fixed window
    got, want = module(x), outlook_oracle(module, x)
    assert (got - want).abs().max() <= 1e-10
    params = [module.offset.weight, module.offset.bias, module.attn.weight, module.v.weight]
    grad = torch.randn_like(got)
    got_grads = torch.autograd.grad(got, params, grad)
    want_grads = torch.autograd.grad(want, params, grad)
    for g, w in zip(got_grads, want_grads):
        assert (g - w).abs().max() <= 1e-9
    assert got_grads[0].abs().max() > 0


def test_nonzero_offsets_change_the_output():
    module = DeformableOutlook(12, num_heads=3).double()
    dcn = DCNv3Mixer(12, groups=3).double()
    x = torch.randn(1, 7, 9, 12, dtype=torch.float64)
    for mixer in (module, dcn):
        before = mixer(x)
        randomise_offsets(mixer)
        assert (mixer(x) - before).abs().max() > 1e-3


@pytest.mark.parametrize('dilation,size', [(1, (7, 9)), (2, (6, 5))])
def test_dcnv3_with_zero_offsets_is_unfold_softmax(dilation, size):
    module = DCNv3Mixer(12, groups=3, dilation=dilation).double()
    with torch.no_grad():
        module.mask.weight.normal_(0, .5)  # a non-uniform softmax; offsets stay zero
    x = torch.randn(2, *size, 12, dtype=torch.float64)
    assert (module(x) - dcnv3_oracle(module, x, use_offsets=False)).abs().max() <= 1e-10


@pytest.mark.parametrize('impl', ['reference', 'fast'])
@pytest.mark.parametrize('dilation,size,groups', [(1, (7, 9), 3), (2, (6, 5), 2)])
def test_dcnv3_with_offsets_matches_deform_conv(impl, dilation, size, groups):
    module = DCNv3Mixer(12, groups=groups, dilation=dilation, offset_scale=2.,
                        impl=impl).double()
    randomise_offsets(module, std=.5)
    x = torch.randn(2, *size, 12, dtype=torch.float64)
    got, want = module(x), dcnv3_oracle(module, x, use_offsets=True)
    assert (got - want).abs().max() <= 1e-10
    params = [module.offset.weight, module.mask.weight, module.input_proj.weight,
              module.dw_conv.weight]
    grad = torch.randn_like(got)
    for g, w in zip(torch.autograd.grad(got, params, grad),
                    torch.autograd.grad(want, params, grad)):
        assert (g - w).abs().max() <= 1e-9
        assert g.abs().max() > 0


def test_attention_dropout_only_in_training():
    module = DeformableOutlook(12, num_heads=3, attn_drop_rate=.5)
    plain = DeformableOutlook(12, num_heads=3)
    plain.load_state_dict(module.state_dict())
    x = torch.randn(1, 7, 9, 12)
    torch.testing.assert_close(module.eval()(x), plain.eval()(x))
    assert not torch.allclose(module.train()(x), plain.train()(x))


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize('build,message', [
    (lambda: DeformableOutlook(16, 3), 'DeformableOutlook num_heads=3: must divide '
                                       'embed_dims=16'),
    (lambda: DeformableOutlook(16, 2, kernel_size=4), 'DeformableOutlook kernel_size=4: '
                                                      'must be an odd int'),
    (lambda: DeformableOutlook(16, 2, padding=2), 'DeformableOutlook padding=2: must be '
                                                  'kernel_size // 2 = 1'),
    (lambda: DeformableOutlook(16, 2, stride=0), 'DeformableOutlook stride=0: must be an int'),
    (lambda: DeformableOutlook(16, 2, offset_groups=3), 'DeformableOutlook offset_groups=3: '
                                                        'must divide embed_dims=16'),
    (lambda: DeformableOutlook(16, 2, attn_drop_rate=1.5), 'DeformableOutlook '
                                                           'attn_drop_rate=1.5: must be in'),
    (lambda: DeformableOutlook(16, 2, offset_scale=0), 'DeformableOutlook offset_scale=0'),
    (lambda: DeformableOutlook(16, 2, impl='nope'), "'nope'"),
    (lambda: DCNv3Mixer(20), 'DCNv3Mixer embed_dims=20: does not split into groups of 16'),
    (lambda: DCNv3Mixer(16, groups=3), 'DCNv3Mixer groups=3: must divide embed_dims=16'),
    (lambda: DCNv3Mixer(16, stride=2), 'DCNv3Mixer stride=2: only stride=1'),
    (lambda: DCNv3Mixer(16, dilation=0), 'DCNv3Mixer dilation=0: must be an int >= 1'),
    (lambda: DCNv3Mixer(16, kernel_size=2), 'DCNv3Mixer kernel_size=2: must be an odd int'),
    (lambda: DCNv3Mixer(16, dw_kernel_size=0), 'DCNv3Mixer dw_kernel_size=0'),
])
def test_bad_arguments_raise_one_line(build, message):
    with pytest.raises((TypeError, ValueError)) as info:
        build()
    text = str(info.value)
    assert message in text and '\n' not in text, text


@pytest.mark.parametrize('mixer', MIXERS)
def test_bad_input_rank_raises_one_line(mixer):
    module = DeformableOutlook(8, 2) if mixer == 'DeformableOutlook' else DCNv3Mixer(16)
    with pytest.raises(ValueError, match=rf'^{mixer}: expected a 4-d \(B, H, W, C\) input') \
            as info:
        module(torch.randn(2, 5, 8))
    assert '\n' not in str(info.value)


# ------------------------------------------------------------------------------ in VOLO
@pytest.mark.parametrize('mixer', MIXERS)
def test_volo_with_mixer_inits_at_zero_offsets_and_trains(mixer):
    model = VOLO(arch=TINY_ARCH, token_mixer=dict(type=mixer))
    model.init_weights()  # VOLO's truncated-normal init of every Linear
    predictors = {name: p for name, p in model.named_parameters()
                  if is_predictor(name)}
    assert predictors and all(not p.any() for p in predictors.values())
    assert type(model.network[0][0].attn).__name__ == mixer
    x = torch.randn(2, 3, 45, 61)
    outs = model(x)
    assert [o.shape[2:] for o in outs] == [(12, 16), (6, 8), (3, 4), (2, 2)]
    sum(o.square().mean() for o in outs).backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in predictors.values()
               if p.dim() == 2)


def test_volo_with_deformable_outlook_at_init_is_volo():
    torch.manual_seed(0)
    official = VOLO(arch=TINY_ARCH).double()
    official.init_weights()
    deform = VOLO(arch=TINY_ARCH, token_mixer=dict(type='DeformableOutlook')).double()
    result = deform.load_state_dict(official.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all('.attn.offset.' in key for key in result.missing_keys)
    x = torch.randn(1, 3, 45, 61, dtype=torch.float64)
    for got, want in zip(deform.eval()(x), official.eval()(x)):
        assert (got - want).abs().max() <= 1e-6


@pytest.mark.parametrize('mixer', MIXERS)
def test_state_dict_round_trip(mixer, tmp_path):
    model = VOLO(arch=TINY_ARCH, token_mixer=dict(type=mixer)).eval()
    model.init_weights()
    randomise_offsets(model)
    torch.save(model.state_dict(), tmp_path / 'model.pth')
    fresh = VOLO(arch=TINY_ARCH, token_mixer=dict(type=mixer)).eval()
    fresh.load_state_dict(torch.load(tmp_path / 'model.pth', weights_only=True), strict=True)
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        for got, want in zip(fresh(x), model(x)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.slow(seconds=12)
@pytest.mark.parametrize('mixer', MIXERS)
def test_volo_compiles_without_graph_break(mixer):
    model = VOLO(arch=TINY_ARCH, token_mixer=dict(type=mixer)).double()
    randomise_offsets(model)
    assert_compiles_like_eager(model, torch.randn(1, 3, 40, 56, dtype=torch.float64))


@pytest.mark.parametrize('cfg', [dict(type='DeformableOutlook', stride=1),
                                 dict(type='DCNv3Mixer', groups=2)])
def test_mixer_neck_with_mixer(cfg):
    neck = MixerNeck([16, 16, 32, 32], levels=[0, 2], token_mixer=cfg, head_dims=8)
    neck.init_weights()  # TruncNormal on every Linear: the predictors stay zero
    assert all(not p.any() for name, p in neck.named_parameters()
               if is_predictor(name))
    randomise_offsets(neck)
    inputs = tuple(torch.randn(2, c, -(-37 // s), -(-50 // s))
                   for c, s in zip((16, 16, 32, 32), (4, 8, 16, 32)))
    outputs = neck(inputs)
    assert [o.shape for o in outputs] == [i.shape for i in inputs]
    assert outputs[1] is inputs[1] and not torch.allclose(outputs[0], inputs[0])
    sum(o.square().mean() for o in outputs).backward()
    offset = neck.stages['0'][0].attn.offset.weight
    assert offset.grad.abs().max() > 0


# ------------------------------------------------------------------------------ configs
@pytest.mark.slow(seconds=3)
@pytest.mark.parametrize('mixer', MIXERS)
def test_ablation_config_builds_its_mixer(mixer):
    model = build_model_for_analysis(str(ABLATION[mixer]))
    assert type(model.backbone.network[0][0].attn).__name__ == mixer
    with torch.no_grad():
        logits = model.decode_head.forward(model.extract_feat(torch.randn(1, 3, 64, 64)))
    assert logits.shape == (1, 6, 16, 16)


def strip_mixer(cfg: Config) -> dict:
    data = copy.deepcopy(cfg.to_dict())
    data['model']['backbone'].pop('token_mixer', None)
    return data


@pytest.mark.slow(seconds=4)
def test_ade20k_config_is_d1_with_the_mixer_swapped():
    cfg, base = Config.fromfile(str(ADE_CONFIG)), Config.fromfile(str(D1_ADE))
    assert cfg.model.backbone.token_mixer == dict(type='DeformableOutlook', kernel_size=3,
                                                  stride=2)
    assert 'token_mixer' not in base.model.backbone
    assert strip_mixer(cfg) == strip_mixer(base)
    model = build_model_for_analysis(cfg)
    attn = model.backbone.network[0][0].attn
    assert isinstance(attn, DeformableOutlook)
    assert (attn.embed_dims, attn.num_heads, attn.stride) == (192, 6, 2)
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [192, 192, 384, 384]
