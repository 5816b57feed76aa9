"""The VOLO backbone: parity with timm, shapes at any size, loading, freezing, errors."""
import math

import pytest
import torch

from mmvolo import VOLO
from mmvolo.models.weights import CheckpointError, convert_state_dict

pytest.importorskip('timm')
from timm_volo import random_timm_volo, timm_checkpoint  # noqa: E402


def assert_equals_timm_blocks(backbone: VOLO, reference: torch.nn.Module, size: int) -> None:
    images = torch.randn(1, 3, size, size)
    with torch.no_grad():
        expected = reference.forward_intermediates(images, norm=False, intermediates_only=True)
        outputs = backbone.eval()(images)
    assert len(outputs) == len(expected) == 4
    for out, want in zip(outputs, expected):
        assert out.shape == want.shape
        assert (out - want).abs().max().item() <= 1e-5


def test_d1_from_a_timm_file_equals_timm_blocks(tmp_path):
    """The whole path: a timm file on disk, init_cfg=Pretrained, raw mode, 224 px."""
    checkpoint = tmp_path / 'd1.pth'
    reference = timm_checkpoint('d1', checkpoint)
    backbone = VOLO('d1', feature_pyramid=False,
                    init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint)))
    backbone.init_weights()
    assert_equals_timm_blocks(backbone, reference, 224)


@pytest.mark.slow(seconds=2)  # x5: D4 and D5 take ~3.5 s each (random weights, forward)
@pytest.mark.parametrize('arch', ['d1', 'd2', 'd3', 'd4', 'd5'])
def test_every_variant_equals_timm_blocks(arch):
    """Each variant's architecture and key mapping, at 64 px, built on the meta device and
    given timm's weights through the loader's own mapping (no file: D5 is 300M params)."""
    reference = random_timm_volo(arch, img_size=64, seed=1)
    with torch.device('meta'):
        backbone = VOLO(arch, img_size=64, feature_pyramid=False)
    backbone.to_empty(device='cpu')
    state_dict, _ = convert_state_dict(reference.state_dict(), pos_embed_size=(4, 4))
    result = backbone.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert_equals_timm_blocks(backbone, reference, 64)


@pytest.mark.parametrize('size', [(333, 517), (512, 1024), (769, 769), (1024, 2048), (17, 9)])
def test_pyramid_shapes_at_any_size(size, tiny_arch):
    backbone = VOLO(tiny_arch).eval()
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, *size))
    assert len(outputs) == 4
    for out, stride, channels in zip(outputs, (4, 8, 16, 32), backbone.out_channels):
        assert out.shape == (1, channels, math.ceil(size[0] / stride),
                             math.ceil(size[1] / stride))
        assert torch.isfinite(out).all()


def test_d1_pyramid_channels_and_odd_size():
    backbone = VOLO('d1').eval()
    assert backbone.out_channels == [192, 192, 384, 384]
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 97, 131))
    assert [tuple(out.shape[2:]) for out in outputs] == [(25, 33), (13, 17), (7, 9), (4, 5)]


def test_raw_mode_shapes_and_out_indices(tiny_arch):
    backbone = VOLO(tiny_arch, feature_pyramid=False, out_indices=(0, 3)).eval()
    outputs = backbone(torch.randn(2, 3, 50, 70))
    assert [tuple(out.shape) for out in outputs] == [(2, 16, 7, 9), (2, 32, 4, 5)]
    assert backbone.out_channels == [16, 32]


def test_pos_embed_is_resized_at_run_time(tiny_arch):
    backbone = VOLO(tiny_arch, img_size=64, out_indices=(2,)).eval()
    assert backbone.pos_embed.shape == (1, 4, 4, 32)
    with torch.no_grad():
        base = backbone(torch.randn(1, 3, 96, 160))[0]
        backbone.pos_embed.add_(1.0)
        shifted = backbone(torch.randn(1, 3, 96, 160))[0]
    assert base.shape == shifted.shape == (1, 32, 6, 10)
    assert not torch.allclose(base, shifted)


def test_pretrained_pos_embed_resized_on_load(tmp_path):
    checkpoint = tmp_path / 'd1_224.pth'
    timm_checkpoint('d1', checkpoint)
    backbone = VOLO('d1', img_size=384, init_cfg=dict(type='Pretrained',
                                                      checkpoint=str(checkpoint)))
    backbone.init_weights()
    assert backbone.pos_embed.shape == (1, 24, 24, 384)


@pytest.mark.parametrize('wrapper', ['state_dict', 'state_dict_ema', 'model', 'module'])
def test_pretrained_wrappers_load(wrapper, tmp_path, tiny_arch):
    source = VOLO(tiny_arch)
    source.init_weights()
    state = {f'module.{k}': v for k, v in source.state_dict().items()} \
        if wrapper == 'module' else {wrapper: source.state_dict()}
    torch.save(state, tmp_path / 'ckpt.pth')
    target = VOLO(tiny_arch, init_cfg=dict(type='Pretrained',
                                           checkpoint=str(tmp_path / 'ckpt.pth')))
    target.init_weights()
    for key, value in source.state_dict().items():
        if key.startswith('network.') or key.startswith('patch_embed.'):
            torch.testing.assert_close(target.state_dict()[key], value)


def test_pretrained_rejects_other_models(tmp_path):
    torch.save({'layer1.0.conv1.weight': torch.zeros(64, 64, 3, 3)}, tmp_path / 'resnet.pth')
    backbone = VOLO('d1', init_cfg=dict(type='Pretrained',
                                        checkpoint=str(tmp_path / 'resnet.pth')))
    with pytest.raises(CheckpointError, match='not a VOLO checkpoint.*ResNet'):
        backbone.init_weights()


def test_pretrained_rejects_other_variant(tmp_path, tiny_arch):
    torch.save(VOLO(tiny_arch).state_dict(), tmp_path / 'tiny.pth')
    backbone = VOLO('d1', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'tiny.pth')))
    with pytest.raises(CheckpointError, match='do not fit this backbone.*set arch'):
        backbone.init_weights()


def test_truncated_checkpoint_is_a_clear_error(tmp_path, tiny_arch):
    torch.save(VOLO(tiny_arch).state_dict(), tmp_path / 'full.pth')
    data = (tmp_path / 'full.pth').read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
    backbone = VOLO(tiny_arch, init_cfg=dict(type='Pretrained',
                                             checkpoint=str(tmp_path / 'cut.pth')))
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        backbone.init_weights()


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown VOLO arch 'd9'.*'d1', 'd2', 'd3', 'd4', 'd5'"):
        VOLO('d9')


@pytest.mark.parametrize('out_indices', [(0, 4), (-1,), ()])
def test_out_indices_out_of_range(out_indices):
    with pytest.raises(ValueError, match='out_indices'):
        VOLO('d1', out_indices=out_indices)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(drop_path_rate=-0.5), ValueError, r'drop_path_rate=-0.5: must be in \[0, 1\)'),
    (dict(drop_path_rate=1.5), ValueError, r'drop_path_rate=1.5: must be in \[0, 1\)'),
    (dict(drop_path_rate='0.1'), TypeError, r"drop_path_rate='0.1': must be a number"),
    (dict(attn_drop_rate=1.0), ValueError, r'attn_drop_rate=1.0: must be in \[0, 1\)'),
    (dict(img_size=0), ValueError, r'img_size=0: must be >= 16'),
    (dict(img_size=-32), ValueError, r'img_size=-32: must be >= 16'),
    (dict(img_size=(64, 0)), ValueError, r'img_size=\(64, 0\): must be >= 16'),
    (dict(img_size=8), ValueError, r'img_size=8: must be >= 16'),
    (dict(img_size=64.0), TypeError, r'img_size=64.0: must be an int or a pair'),
    (dict(img_size=(64, 64, 64)), TypeError, r'img_size=\(64, 64, 64\): must be an int or a pair'),
    (dict(out_indices=(1.5,)), TypeError, r'out_indices=\(1.5,\): must be an int or a sequence'),
    (dict(out_indices=('1',)), TypeError, r"out_indices=\('1',\): must be an int or a seq"),
    (dict(out_indices=(True, 2)), TypeError, r'out_indices=\(True, 2\): must be an int or a'),
    (dict(out_indices='1'), TypeError, r"out_indices='1': must be an int or a sequence"),
    (dict(frozen_stages=5), ValueError, r'frozen_stages=5: must be in -1..4'),
    (dict(in_channels=0), ValueError, r'in_channels=0: must be >= 1'),
])
def test_bad_constructor_args_are_one_line_errors(kwargs, error, match, tiny_arch):
    with pytest.raises(error, match=f'^VOLO {match}') as info:
        VOLO(tiny_arch, **kwargs)
    assert '\n' not in str(info.value)


def test_validated_args_are_normalised(tiny_arch):
    backbone = VOLO(tiny_arch, img_size=[32, 48], out_indices=[1, 2], drop_path_rate=0.5)
    assert backbone.img_size == (32, 48)
    assert backbone.out_indices == (1, 2)
    assert VOLO(tiny_arch, out_indices=3).out_indices == (3,)


@pytest.mark.parametrize('shape', [(1, 1, 64, 64), (3, 64, 64), (1, 4, 32, 32)])
def test_input_must_be_3_channel_nchw(shape, tiny_arch):
    with pytest.raises(ValueError, match=r'expects images \(B, 3, H, W\)'):
        VOLO(tiny_arch)(torch.randn(*shape))


@pytest.mark.parametrize('shape', [(0, 3, 32, 32), (1, 3, 0, 32), (2, 3, 32, 0)])
def test_empty_input_is_a_clear_error(shape, tiny_arch):
    with pytest.raises(ValueError, match=r'non-empty batch \(B >= 1, H >= 1, W >= 1\)'):
        VOLO(tiny_arch)(torch.zeros(*shape))


@pytest.mark.parametrize('dtype', [torch.uint8, torch.float64, torch.int64])
def test_input_dtype_must_match_the_weights(dtype, tiny_arch):
    images = torch.zeros(1, 3, 32, 32, dtype=dtype)
    match = (r"expects a floating-point tensor of the model's dtype float32, got "
             rf'{dtype}; normalise/convert it first')
    with pytest.raises(TypeError, match=match):
        VOLO(tiny_arch)(images)


def test_autocast_accepts_float32_and_bf16_input(tiny_arch):
    backbone = VOLO(tiny_arch).eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        for dtype in (torch.float32, torch.bfloat16):
            outputs = backbone(torch.randn(1, 3, 32, 32, dtype=dtype))
            assert all(torch.isfinite(out.float()).all() for out in outputs)


def test_frozen_stages_and_norm_eval(tiny_arch):
    backbone = VOLO(tiny_arch, frozen_stages=2, norm_eval=True)
    backbone.train()
    frozen = [name for name, param in backbone.named_parameters() if not param.requires_grad]
    assert all(name.startswith(('patch_embed', 'network.0', 'network.1', 'network.2',
                                'pos_embed')) for name in frozen)
    assert any(name.startswith('network.1') for name in frozen)  # the downsample
    assert 'pos_embed' in frozen
    assert all(param.requires_grad for name, param in backbone.named_parameters()
               if name.startswith(('network.3', 'network.4', 'out_norms')))
    assert not backbone.patch_embed.conv[1].training
    assert backbone.network[3].training


def test_with_cp_matches_plain_forward_and_grads(tiny_arch):
    plain = VOLO(tiny_arch).train()
    checkpointed = VOLO(tiny_arch, with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 48, 48)
    loss_plain = sum(out.square().mean() for out in plain(images))
    loss_cp = sum(out.square().mean() for out in checkpointed(images))
    torch.testing.assert_close(loss_cp, loss_plain)
    loss_plain.backward()
    loss_cp.backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


def test_drop_path_only_in_transformer_blocks(tiny_arch):
    backbone = VOLO(dict(tiny_arch, layers=(2, 1, 1, 2)), drop_path_rate=0.3)
    outlooker_drops = [type(block.drop_path).__name__ for block in backbone.network[0]]
    assert outlooker_drops == ['Identity', 'Identity']
    last = backbone.network[4][1].drop_path
    assert last.drop_prob == pytest.approx(0.3)


def test_every_parameter_gets_a_gradient(tiny_arch):
    backbone = VOLO(tiny_arch).train()
    sum(out.mean() for out in backbone(torch.randn(2, 3, 40, 56))).backward()
    missing = [name for name, param in backbone.named_parameters() if param.grad is None]
    assert not missing


def test_layer_depth_ids(tiny_arch):
    backbone = VOLO(dict(tiny_arch, layers=(2, 1, 1, 1)))
    depth = backbone.get_layer_depth
    assert depth('backbone.patch_embed.proj.weight', 'backbone.') == (0, 7)
    assert depth('backbone.pos_embed', 'backbone.') == (0, 7)
    assert depth('backbone.network.0.1.attn.v.weight', 'backbone.')[0] == 2
    assert depth('backbone.network.1.proj.weight', 'backbone.')[0] == 3
    assert depth('backbone.network.2.0.attn.qkv.weight', 'backbone.')[0] == 3
    assert depth('backbone.network.4.0.mlp.fc1.weight', 'backbone.')[0] == 5
    assert depth('decode_head.conv_seg.weight', 'backbone.')[0] == 6


def test_registered_for_mmseg_and_mmpretrain(tiny_arch):
    from mmpretrain.registry import MODELS as CLS_MODELS
    from mmseg.registry import MODELS as SEG_MODELS

    for registry in (SEG_MODELS, CLS_MODELS):
        backbone = registry.build(dict(type='VOLO', arch=tiny_arch))
        assert isinstance(backbone, VOLO)


def test_mmpretrain_image_classifier_with_volo_backbone(tiny_arch):
    from mmpretrain.registry import MODELS as CLS_MODELS
    from mmpretrain.structures import DataSample
    from mmpretrain.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    classifier = CLS_MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='VOLO', arch=tiny_arch, feature_pyramid=False, out_indices=(3,)),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=4, in_channels=32,
                  loss=dict(type='CrossEntropyLoss'))))
    images = torch.randn(2, 3, 64, 64)
    samples = [DataSample().set_gt_label(label) for label in (1, 3)]
    losses = classifier(images, samples, mode='loss')
    losses['loss'].backward()
    predictions = classifier(images, mode='predict')
    assert predictions[0].pred_score.shape == (4,)


def test_backbone_compiles_without_graph_breaks(tiny_arch):
    backbone = VOLO(tiny_arch).eval()
    explanation = torch._dynamo.explain(backbone)(torch.randn(1, 3, 45, 61))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]


def test_backbone_under_bf16_autocast(tiny_arch):
    backbone = VOLO(tiny_arch).train()
    images = torch.randn(2, 3, 40, 40)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outputs = backbone(images)
    reference = VOLO(tiny_arch).train()
    reference.load_state_dict(backbone.state_dict())
    expected = reference(images)
    for out, want in zip(outputs, expected):
        assert torch.isfinite(out.float()).all()
        assert (out.float() - want).abs().max() < 0.1 * want.abs().max()
    sum(out.float().mean() for out in outputs).backward()
    assert backbone.network[0][0].attn.v.weight.grad is not None
