"""MixerNeck: token-mixer blocks on chosen pyramid levels of any backbone keep every shape,
leave the other levels untouched, learn, and ship as configs (VOLO-D1 and mmseg's Swin-T
UperNet on ADE20K) that build and take a training step on CPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_segmentor import make_batch

from mmvolo.models import MixerNeck
from mmvolo.models.mixer_builder import build_token_mixer, registered_mixers
from mmvolo.registry import MODELS
from mmvolo.utils import build_model_for_analysis

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs' / 'mixer_neck'
NECK_CONFIGS = sorted(CONFIG_DIR.glob('*.py'))


def pyramid(channels=(16, 16, 32, 32), size=(37, 50), batch=2) -> tuple[torch.Tensor, ...]:
    """Maps at strides 4, 8, 16, 32 of an odd-sized (H, W) input."""
    return tuple(torch.randn(batch, c, -(-size[0] // s), -(-size[1] // s))
                 for c, s in zip(channels, (4, 8, 16, 32)))


@pytest.mark.parametrize('mixer', registered_mixers())
def test_every_mixer_keeps_shapes_and_passes_other_levels_through(mixer):
    neck = MixerNeck([16, 16, 32, 32], levels=[0, 2], token_mixer=dict(type=mixer),
                     head_dims=8)
    neck.init_weights()
    inputs = pyramid()
    outputs = neck(inputs)
    assert [o.shape for o in outputs] == [i.shape for i in inputs]
    assert all(o.is_contiguous() for o in outputs)
    assert outputs[1] is inputs[1] and outputs[3] is inputs[3]
    assert not torch.allclose(outputs[0], inputs[0])
    assert not torch.allclose(outputs[2], inputs[2])


def test_heads_follow_head_dims_and_blocks_stack():
    neck = MixerNeck([96, 192], num_blocks=2)
    assert [len(neck.stages[str(level)]) for level in (0, 1)] == [2, 2]
    assert [neck.stages[str(level)][0].attn.num_heads for level in (0, 1)] == [3, 6]
    assert neck.stages['0'][0].attn.stride == 1


def test_neck_learns_to_fit_a_target():
    neck = MixerNeck([16, 32], head_dims=8)
    neck.init_weights()
    inputs = pyramid((16, 32), size=(24, 40))[:2]
    targets = [torch.randn_like(x) for x in inputs]
    optimizer = torch.optim.Adam(neck.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        outputs = neck(inputs)
        loss = sum(torch.nn.functional.mse_loss(o, t) for o, t in zip(outputs, targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize('kwargs, message', [
    (dict(in_channels=[]), 'in_channels=[]: must be a non-empty list'),
    (dict(in_channels=[16, 32], levels=[2]), 'levels=[2]: must be a non-empty list of level '
                                             'indices in 0..1'),
    (dict(in_channels=[16, 30]), 'level 1 has 30 channels, not a multiple of head_dims=8'),
    (dict(in_channels=[16], num_blocks=0), 'num_blocks=0: must be an int >= 1'),
])
def test_bad_arguments_are_one_line(kwargs, message):
    with pytest.raises(ValueError, match='MixerNeck') as error:
        MixerNeck(**dict(dict(head_dims=8), **kwargs))
    assert message in str(error.value) and '\n' not in str(error.value)


def test_wrong_number_of_levels_names_the_fix():
    with pytest.raises(ValueError, match="expects 2 levels .* set in_channels to the backbone"):
        MixerNeck([16, 32], head_dims=8)(pyramid()[:3])


def test_unknown_mixer_names_the_known_ones():
    with pytest.raises(KeyError, match="'Nope' is not registered; use one of OutlookAttention"):
        build_token_mixer(dict(type='Nope'), 16)
    with pytest.raises(TypeError, match='token_mixer must be a dict'):
        build_token_mixer('OutlookAttention', 16)
    assert MODELS.get('MixerNeck') is MixerNeck


def test_both_neck_configs_are_shipped():
    assert [path.name for path in NECK_CONFIGS] == [
        'swin-tiny_outlooker-neck_upernet_8xb2-160k_ade20k-512x512.py',
        'volo-d1_outlooker-neck_upernet_8xb2-160k_ade20k-512x512.py']


@pytest.mark.parametrize('path', NECK_CONFIGS, ids=lambda path: path.name.split('_')[0])
def test_neck_config_builds_and_trains_one_step(path):
    """The shipped model (backbone and neck as configured; 64x64 inputs, not padded to the
    512x512 crop, and heads narrowed to 16 channels to keep the CPU step short) computes a
    finite loss whose gradient reaches every neck weight."""
    small = {'model.decode_head.channels': 16, 'model.auxiliary_head.channels': 16,
             'model.data_preprocessor.size': (64, 64)}
    segmentor = build_model_for_analysis(path, small).train()
    assert isinstance(segmentor.neck, MixerNeck)
    assert segmentor.neck.levels == [0, 1]
    data = segmentor.data_preprocessor(make_batch(num=2, size=(64, 64), num_classes=150),
                                       training=True)
    losses = segmentor(**data, mode='loss')
    total = sum(value for key, value in losses.items() if 'loss' in key)
    assert torch.isfinite(total)
    total.backward()
    grads = {name: p.grad for name, p in segmentor.neck.named_parameters()}
    assert grads and all(g is not None and g.abs().max() > 0 for g in grads.values())
