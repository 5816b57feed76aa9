"""What a run starts from: ``--resume`` picks an intact checkpoint (a damaged one is refused
with the intact one to use), ``load_from`` must fit the backbone and says what loaded."""
from __future__ import annotations

import os

import pytest
import torch
from mmengine.config import Config
from tool_helpers import TOY_CONFIG, make_tiny_data, run_tool_in_process, write_tiny_config

from mmvolo.cli import UsageError, check_load_from, resolve_resume
from mmvolo.cli.checks import expected_shapes


def checkpoint(path, iteration: int):
    torch.save({'meta': {'iter': iteration}, 'state_dict': {'w': torch.ones(64)}}, path)
    return path


def truncate(path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def flip_a_data_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[data.index(b'\x00\x00\x80?')] ^= 0x40  # inside the tensor bytes (1.0 as float32)
    path.write_bytes(bytes(data))


def test_auto_resume_takes_the_marked_checkpoint(tmp_path):
    checkpoint(tmp_path / 'iter_2.pth', 2)
    marked = checkpoint(tmp_path / 'iter_4.pth', 4)
    (tmp_path / 'last_checkpoint').write_text(str(marked))
    assert resolve_resume('auto', tmp_path) == str(marked)
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume('auto', tmp_path / 'no_such_dir') is None


def test_empty_marker_falls_back_to_the_newest_periodic_checkpoint(tmp_path):
    checkpoint(tmp_path / 'iter_2.pth', 2)
    newest = checkpoint(tmp_path / 'iter_10.pth', 10)
    (tmp_path / 'last_checkpoint').write_text('')
    assert resolve_resume('auto', tmp_path) == str(newest)


@pytest.mark.parametrize('damage', [truncate, flip_a_data_byte], ids=['truncated', 'bad CRC'])
@pytest.mark.parametrize('how', ['auto', 'explicit'])
def test_damaged_checkpoint_names_the_intact_one(tmp_path, damage, how):
    intact = checkpoint(tmp_path / 'iter_2.pth', 2)
    latest = checkpoint(tmp_path / 'iter_4.pth', 4)
    (tmp_path / 'last_checkpoint').write_text(str(latest))
    damage(latest)
    with pytest.raises(UsageError, match=rf'iter_4\.pth is (truncated or )?corrupt.*--resume '
                       rf'{intact}$') as info:
        resolve_resume('auto' if how == 'auto' else str(latest), tmp_path)
    assert info.value.exit_code == 1


def test_damaged_checkpoint_without_an_intact_one(tmp_path):
    latest = checkpoint(tmp_path / 'iter_4.pth', 4)
    truncate(latest)
    with pytest.raises(UsageError, match='no intact .* start afresh without --resume'):
        resolve_resume(str(latest), tmp_path)


@pytest.fixture(scope='module')
def toy_cfg() -> Config:
    import mmvolo.runtime  # noqa: F401  (builds mmseg models with mmcv-lite)
    return Config.fromfile(str(TOY_CONFIG))


@pytest.fixture(scope='module')
def toy_weights(toy_cfg) -> dict[str, torch.Tensor]:
    return {key: torch.zeros(shape) for key, shape in expected_shapes(toy_cfg).items()}


def test_load_from_a_fitting_checkpoint_summarises(tmp_path, toy_cfg, toy_weights):
    weights = dict(toy_weights)
    weights['decode_head.conv_seg.weight'] = torch.zeros(19, 32, 1, 1)  # other classes
    del weights['auxiliary_head.conv_seg.bias']
    weights['extra.thing'] = torch.zeros(1)
    path = tmp_path / 'seg.pth'
    torch.save({'state_dict': weights, 'meta': {}}, path)
    summary = check_load_from(str(path), toy_cfg)
    assert summary == (f'[mmvolo] load_from {path}: {len(toy_weights) - 2} tensors loaded, '
                       '1 missing (e.g. auxiliary_head.conv_seg.bias), 1 unexpected (e.g. '
                       'extra.thing), 1 shape-mismatched (e.g. decode_head.conv_seg.weight)')


@pytest.mark.parametrize('kind, message', [
    ('resnet', r'not a checkpoint of this model \(.*ResNet'),
    ('bare backbone', r'bare VOLO backbone weights .*init_cfg'),
    ('other arch', r'does not fit this backbone: \d+ of its \d+ tensors'),
])
def test_load_from_that_does_not_fit_is_refused(tmp_path, toy_cfg, toy_weights, kind,
                                                message):
    if kind == 'resnet':
        weights = {'conv1.weight': torch.zeros(64, 3, 7, 7), 'layer1.0.conv1.weight':
                   torch.zeros(64, 64, 1, 1), 'fc.weight': torch.zeros(1000, 2048)}
    elif kind == 'bare backbone':
        weights = {key[len('backbone.'):]: value for key, value in toy_weights.items()
                   if key.startswith('backbone.')}
    else:
        weights = {key: (torch.zeros(value.shape[0] * 2, *value.shape[1:])
                         if key.startswith('backbone.network') and value.dim() else value)
                   for key, value in toy_weights.items()}
    path = tmp_path / f'{kind}.pth'
    torch.save({'state_dict': weights}, path)
    with pytest.raises(UsageError, match=message) as info:
        check_load_from(str(path), toy_cfg)
    assert info.value.exit_code == 1 and '\n' not in str(info.value)


def test_train_refuses_a_foreign_load_from_in_one_line(tmp_path, capsys):
    config = write_tiny_config(tmp_path / 'tiny.py', make_tiny_data(tmp_path / 'toy'), 2, 2)
    foreign = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(64, 3, 7, 7)}}, foreign)
    result = run_tool_in_process('train.py', config, '--work-dir', tmp_path / 'run',
                                 '--cfg-options', f'load_from={foreign}', capsys=capsys)
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f'error: load_from {foreign} is not a checkpoint of this model')
    assert not list((tmp_path / 'run').glob('*.pth'))
    assert os.path.exists(foreign)
