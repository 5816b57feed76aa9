"""VOLO(token_mixer=...): the outlooker stage takes any registered mixer; the default is
today's model (same parameters, same outputs), every other mixer keeps every output shape,
and ``init_cfg=Pretrained`` loads everything but the swapped mixer, saying so in one line."""
from __future__ import annotations

import pytest
import torch

import mmvolo.models.weights as weights_module
from mmvolo.models import VOLO
from mmvolo.models.mixer_builder import registered_mixers

SWAPPED = [name for name in registered_mixers() if name != 'OutlookAttention']


def test_swappable_mixers_are_registered():
    assert SWAPPED == ['Involution', 'LocalSelfAttention', 'DWConvMixer', 'DeformableOutlook',
                       'DCNv3Mixer']


def test_default_mixer_is_the_official_model(tiny_arch):
    torch.manual_seed(0)
    implicit = VOLO(tiny_arch)
    torch.manual_seed(0)
    explicit = VOLO(tiny_arch, token_mixer=dict(type='OutlookAttention'))
    assert implicit.token_mixer == explicit.token_mixer == 'OutlookAttention'
    implicit.init_weights()
    explicit.load_state_dict(implicit.state_dict(), strict=True)
    x = torch.randn(1, 3, 40, 56)
    for got, want in zip(explicit.eval()(x), implicit.eval()(x)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize('mixer', SWAPPED)
def test_every_mixer_keeps_every_output_shape(tiny_arch, mixer):
    baseline = VOLO(tiny_arch).eval()
    swapped = VOLO(tiny_arch, token_mixer=dict(type=mixer)).eval()
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        assert [o.shape for o in swapped(x)] == [o.shape for o in baseline(x)]
    assert type(swapped.network[0][0].attn).__name__ == mixer
    own, official = set(swapped.state_dict()), set(baseline.state_dict())
    assert all(key.startswith('network.0.') and '.attn.' in key for key in own ^ official)


@pytest.mark.parametrize('mixer', [name for name in SWAPPED if name != 'DeformableOutlook'])
def test_pretrained_loads_everything_but_the_swapped_mixer(tiny_arch, tmp_path, monkeypatch,
                                                           mixer):
    source = VOLO(tiny_arch)
    source.init_weights()
    torch.save({'state_dict': source.state_dict()}, tmp_path / 'outlook.pth')
    logged: list[str] = []
    monkeypatch.setattr(weights_module, 'print_log', lambda msg, **kw: logged.append(msg))
    target = VOLO(tiny_arch, token_mixer=dict(type=mixer),
                  init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'outlook.pth')))
    target.init_weights()

    official = source.state_dict()
    mixer_keys = [key for key in target.state_dict() if key.startswith('network.0.')
                  and '.attn.' in key]
    for key, value in target.state_dict().items():
        if key in mixer_keys or key.startswith(('out_norms.', 'upsample.')):
            continue
        torch.testing.assert_close(value, official[key], rtol=0, atol=0)
    for key in mixer_keys:  # left at VOLO's init, even where a name matches (``attn.proj``)
        if key.endswith('weight') and key in official \
                and official[key].shape == target.state_dict()[key].shape:
            assert not torch.equal(target.state_dict()[key], official[key]), key
    dropped = len([key for key in official if key.startswith('network.0.')
                   and '.attn.' in key])
    lines = logged[0].splitlines()
    assert f'  token mixer {mixer}: newly initialised {len(mixer_keys)} tensors ' \
           f'(network.0.*.attn.*), {dropped} OutlookAttention tensors of the checkpoint not ' \
           'used' in lines
    assert not any('MISSING' in line or 'unexpected' in line for line in lines), lines


@pytest.mark.parametrize('mixer', SWAPPED)
def test_swapped_mixer_trains_with_layer_decay_ids(tiny_arch, mixer):
    backbone = VOLO(tiny_arch, token_mixer=dict(type=mixer))
    backbone.init_weights()
    outputs = backbone(torch.randn(2, 3, 32, 48))
    sum(o.square().mean() for o in outputs).backward()
    # DCNv3's depthwise branch feeds only the zero-initialised offset/mask predictors, so it
    # gets its first gradient after one step (as in DCNv3); every other parameter now.
    zero_at_init = ('.attn.dw_conv.', '.attn.dw_norm.') if mixer == 'DCNv3Mixer' else ()
    for name, param in backbone.network[0].named_parameters(prefix='network.0'):
        assert param.grad is not None, name
        assert (param.grad.abs().max() > 0) != any(part in name for part in zero_at_init), name
        assert backbone.get_layer_depth(name)[0] == 1


def test_bad_token_mixer_is_one_line(tiny_arch):
    with pytest.raises(KeyError, match="token_mixer type 'Convolution' is not registered; "
                                       'use one of OutlookAttention, Involution'):
        VOLO(tiny_arch, token_mixer=dict(type='Convolution'))
    with pytest.raises(TypeError, match='token_mixer must be a dict'):
        VOLO(tiny_arch, token_mixer='Involution')


def test_pretrained_deformable_outlook_starts_as_the_pretrained_volo(tiny_arch, tmp_path,
                                                                     monkeypatch):
    """DeformableOutlook loads v/attn/proj from a VOLO checkpoint; with its zero offsets the
    backbone then computes exactly what the pretrained VOLO does."""
    source = VOLO(tiny_arch)
    source.init_weights()
    path = tmp_path / 'outlook.pth'
    torch.save({'state_dict': source.state_dict()}, path)
    logged: list[str] = []
    monkeypatch.setattr(weights_module, 'print_log', lambda msg, **kw: logged.append(msg))
    target = VOLO(tiny_arch, token_mixer=dict(type='DeformableOutlook'),
                  init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    target.init_weights()
    x = torch.randn(1, 3, 37, 50)
    with torch.no_grad():
        for got, want in zip(target.eval()(x), source.eval()(x)):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    own = [key for key in target.state_dict() if key.startswith('network.0.')
           and '.attn.' in key]
    offsets = [key for key in own if '.attn.offset.' in key]
    assert offsets and all(not target.state_dict()[key].any() for key in offsets)
    loaded = len(own) - len(offsets)
    assert any(f'token mixer DeformableOutlook: newly initialised {len(offsets)} tensors '
               f'(network.0.*.attn.*), 0 OutlookAttention tensors of the checkpoint not used, '
               f'{loaded} loaded into it' in line for line in logged[0].splitlines()), logged
