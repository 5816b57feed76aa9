"""Bad input to the library (issue #22 §4): each is one line naming the fix, not a silent
success or an error from deep inside."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_ARCH

from mmvolo.checkpoint import CheckpointError
from mmvolo.models import VOLO


def one_line(error: BaseException) -> str:
    message = str(error)
    assert '\n' not in message, message
    return message


# ------------------------------------------------------------------------------------------
# Custom arch dicts: every field checked
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('change, error, pattern', [
    (dict(layers=(-1, 1, 1, 1)), ValueError, r'layers must be 4 positive ints .*\(-1, 1, 1, 1\)'),
    (dict(layers=(0, 1, 1, 1)), ValueError, r'layers must be 4 positive ints'),
    (dict(layers=(1, 1, 1, 1.5)), ValueError, r'layers must be 4 positive ints'),
    (dict(layers=(1, 1, 1)), ValueError, r'layers needs 4 entries'),
    (dict(layers=4), TypeError, r'layers must be a sequence of 4 positive ints'),
    (dict(embed_dims=(16, 32, -32, 32)), ValueError, r'embed_dims must be 4 positive ints'),
    (dict(embed_dims=(16, 32, 64, 32)), ValueError, r'embed_dims\[1:\] must be equal'),
    (dict(num_heads=(2, 0, 2, 2)), ValueError, r'num_heads must be 4 positive ints'),
    (dict(num_heads=(3, 2, 2, 2)), ValueError, r'embed_dims 16 do not divide into 3 heads'),
    (dict(mlp_ratio=0), ValueError, r'mlp_ratio must be a positive number, got 0'),
    (dict(mlp_ratio=float('nan')), ValueError, r'mlp_ratio must be a positive number'),
    (dict(stem_hidden_dims=-8), ValueError, r'stem_hidden_dims must be a positive int'),
    (dict(stem_hidden_dims=True), ValueError, r'stem_hidden_dims must be a positive int'),
])
def test_bad_arch_field_is_one_line(change, error, pattern):
    with pytest.raises(error, match=pattern) as info:
        VOLO({**TINY_ARCH, **change})
    one_line(info.value)


def test_good_custom_arch_still_builds():
    backbone = VOLO({**TINY_ARCH, 'layers': [2, 1, 1, 1], 'mlp_ratio': 2})
    assert backbone.arch_settings['layers'] == (2, 1, 1, 1)


def test_config_check_uses_the_same_rule():
    from mmengine.config import Config

    from mmvolo.cli import UsageError, check_arch

    cfg = Config(dict(model=dict(backbone=dict(type='VOLO',
                                               arch={**TINY_ARCH, 'layers': (-1, 1, 1, 1)}))))
    with pytest.raises(UsageError, match=r'^model\.backbone\.arch: custom VOLO arch: layers '
                       'must be 4 positive ints'):
        check_arch(cfg)


# ------------------------------------------------------------------------------------------
# init_cfg=Pretrained: a file lacking backbone tensors, checkpoint=None
# ------------------------------------------------------------------------------------------
@pytest.fixture
def incomplete_file(tmp_path):
    """A tiny VOLO's weights without three of its block tensors."""
    source = VOLO(dict(TINY_ARCH), feature_pyramid=False)
    source.init_weights()
    state = source.state_dict()
    dropped = ['network.2.0.mlp.fc1.weight', 'network.2.0.mlp.fc1.bias',
               'network.4.0.attn.proj.weight', 'network.4.0.norm2.weight']
    for key in dropped:
        del state[key]
    path = tmp_path / 'incomplete.pth'
    torch.save(state, path)
    return path, dropped, state


def test_missing_backbone_tensors_are_refused(incomplete_file):
    path, dropped, _ = incomplete_file
    backbone = VOLO(dict(TINY_ARCH), init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointError, match=rf'incomplete\.pth lacks 4 of the backbone\'s '
                       rf'tensors \({dropped[0]}, {dropped[1]}, {dropped[2]} and 1 more\).*'
                       'allow_missing=True') as info:
        backbone.init_weights()
    one_line(info.value)


def test_allow_missing_loads_the_rest_and_names_them(incomplete_file, monkeypatch):
    import logging

    from mmvolo.models import weights as weights_module

    path, dropped, state = incomplete_file
    backbone = VOLO(dict(TINY_ARCH), init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                                   allow_missing=True))
    logged: list[tuple[str, int]] = []
    monkeypatch.setattr(weights_module, 'print_log',
                        lambda msg, **kw: logged.append((msg, kw.get('level'))))
    backbone.init_weights()
    assert [level for _, level in logged] == [logging.WARNING]
    text = logged[0][0]
    assert 'MISSING from checkpoint (allow_missing=True, left at init): 4 tensors' in text
    assert all(key in text for key in dropped)
    for key, value in state.items():
        torch.testing.assert_close(backbone.state_dict()[key], value)


def test_complete_file_without_bn_counters_is_not_missing(tmp_path):
    """timm-style files may lack BatchNorm's num_batches_tracked: not a missing tensor."""
    source = VOLO(dict(TINY_ARCH), feature_pyramid=False)
    state = {key: value for key, value in source.state_dict().items()
             if not key.endswith('num_batches_tracked')}
    torch.save(state, tmp_path / 'no_counters.pth')
    VOLO(dict(TINY_ARCH), init_cfg=dict(type='Pretrained',
                                        checkpoint=str(tmp_path / 'no_counters.pth'))
         ).init_weights()


@pytest.mark.parametrize('checkpoint', [None, '', 3, ['a.pth']])
def test_pretrained_checkpoint_must_be_a_path_or_url(checkpoint):
    with pytest.raises(ValueError, match=r'checkpoint must be a path or an http\(s\):// URL') \
            as info:
        VOLO(dict(TINY_ARCH), init_cfg=dict(type='Pretrained', checkpoint=checkpoint))
    one_line(info.value)


def test_checkpoint_set_to_none_after_build_is_the_same_line():
    backbone = VOLO(dict(TINY_ARCH))
    backbone.init_cfg = dict(type='Pretrained', checkpoint=None)
    with pytest.raises(ValueError, match='checkpoint must be a path or an http'):
        backbone.init_weights()


def test_allow_missing_must_be_a_bool(tmp_path):
    with pytest.raises(ValueError, match='allow_missing must be True or False'):
        VOLO(dict(TINY_ARCH), init_cfg=dict(type='Pretrained', checkpoint='x.pth',
                                            allow_missing='yes'))


# ------------------------------------------------------------------------------------------
# Input that is not a tensor
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('images, what', [
    (np.zeros((1, 3, 32, 32), dtype=np.float32), r'a numpy\.ndarray of shape \(1, 3, 32, 32\)'),
    ([[0.0]], 'a list'),
])
def test_non_tensor_input_is_one_type_error(images, what):
    backbone = VOLO(dict(TINY_ARCH))
    with pytest.raises(TypeError, match=rf'VOLO expects images as a \(B, 3, H, W\) '
                       rf'torch\.Tensor, got {what}') as info:
        backbone(images)
    one_line(info.value)
