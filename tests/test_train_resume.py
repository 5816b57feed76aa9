"""Resume is exact: a run killed with SIGKILL and resumed equals the uninterrupted run.

The config keeps what makes this hard: dropout in both heads, random resize/crop/flip, data
workers, and validation at the checkpoint iteration. One run is paused after iteration 6 and
killed; ``tools/train.py --resume`` continues it from the iteration-4 checkpoint. Every
logged loss after the resume and every final weight must be bitwise equal to those of a run
that was never interrupted (CPU ops here are deterministic). Parametrized over data loading
in workers and in the main process, whose random streams resume in different ways.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from tool_helpers import (
    REPO,
    TOY_CONFIG,
    make_tiny_data,
    run_tool,
    run_tool_in_process,
    start_tool,
)

from mmvolo.checkpoint import load_checkpoint_file

MAX_ITERS, CHECKPOINT_EVERY, PAUSE_AT = 8, 4, 6
PAUSE_HOOK = '''
"""Test helper: stop (sleep) after a given training iteration, leaving a marker file."""
import os
import time
from pathlib import Path

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class PauseAfterIter(Hook):
    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        marker = os.environ.get('PAUSE_MARKER')
        if marker and runner.iter + 1 == self.at:
            Path(marker).write_text(str(runner.iter + 1))
            time.sleep(600)
'''


def write_random_config(path: Path, data_root: Path, num_workers: int) -> Path:
    """A child of the toy config: 32x32 crops of randomly resized and flipped images,
    dropout 0.1 in both heads, ``num_workers`` data workers, validation at each checkpoint."""
    path.write_text(f'''
_base_ = [{str(TOY_CONFIG)!r}]
custom_imports = dict(imports=['mmvolo.runtime', 'mmvolo', 'mmvolo.datasets.toy_shapes',
                               'pause_hook'], allow_failed_imports=False)
custom_hooks = [dict(type='RNGStateHook'), dict(type='PauseAfterIter', at={PAUSE_AT})]
data_root = {str(data_root)!r}
crop_size = (32, 32)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                 dict(type='PackSegInputs')]
model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(img_size=32),
             decode_head=dict(dropout_ratio=0.1), auxiliary_head=dict(dropout_ratio=0.1))
train_dataloader = dict(batch_size=2, num_workers={num_workers},
                        persistent_workers={num_workers > 0},
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
param_scheduler = [dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0,
                        end={MAX_ITERS})]
train_cfg = dict(max_iters={MAX_ITERS}, val_interval={CHECKPOINT_EVERY})
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval={CHECKPOINT_EVERY}, max_keep_ckpts=-1,
                                     save_best=None))
randomness = dict(seed=0, deterministic=True)
''')
    return path


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp('resume')
    (root / 'pause_hook.py').write_text(PAUSE_HOOK)
    return root, make_tiny_data(root / 'toy')


def _wait_for(path: Path, process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f'training ended early (exit {process.returncode})'
        assert time.monotonic() < deadline, f'no {path.name} after {timeout} s'
        time.sleep(0.5)


def logged_losses(work_dir: Path) -> dict[int, float]:
    """``loss`` per training iteration, from every run folder's ``vis_data/scalars.json``
    (a later run folder, the resumed one, overrides the killed one's iterations)."""
    losses: dict[int, float] = {}
    for scalars in sorted(work_dir.glob('*/vis_data/scalars.json')):
        for line in scalars.read_text().splitlines():
            record = json.loads(line)
            if 'loss' in record:
                losses[record['step']] = record['loss']
    return losses


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint_file(checkpoint)['state_dict']


@pytest.mark.slow(seconds=25)
@pytest.mark.parametrize('num_workers', [2, 0], ids=['workers', 'main-process'])
def test_resume_after_sigkill_equals_uninterrupted_run(data, num_workers):
    root, data_root = data
    config = write_random_config(root / f'random_{num_workers}.py', data_root, num_workers)
    env = {'PYTHONPATH': os.pathsep.join([str(root), str(REPO)])}
    killed_dir, straight_dir = root / f'killed{num_workers}', root / f'straight{num_workers}'
    marker = root / f'paused{num_workers}'
    straight = start_tool('train.py', config, '--work-dir', straight_dir, cwd=REPO,
                          log=root / 'straight.log', **env)
    doomed = start_tool('train.py', config, '--work-dir', killed_dir, cwd=REPO,
                        log=root / 'killed.log', PAUSE_MARKER=str(marker), **env)
    try:
        _wait_for(marker, doomed, timeout=240)
    finally:
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait()
    assert doomed.returncode == -signal.SIGKILL
    assert (killed_dir / f'iter_{CHECKPOINT_EVERY}.pth').is_file()
    assert not (killed_dir / f'iter_{MAX_ITERS}.pth').exists()
    before_kill = logged_losses(killed_dir)

    resumed = run_tool('train.py', config, '--work-dir', killed_dir, '--resume', cwd=REPO,
                       timeout=300, **env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f'resumed epoch: 0, iter: {CHECKPOINT_EVERY}' in resumed.stdout + resumed.stderr
    assert straight.wait(timeout=300) == 0, (root / 'straight.log').read_text()[-3000:]

    straight_losses, resumed_losses = logged_losses(straight_dir), logged_losses(killed_dir)
    assert sorted(straight_losses) == list(range(1, MAX_ITERS + 1))
    assert resumed_losses == straight_losses  # every iteration, bitwise
    # the killed run had logged iteration 5 once already; the resumed run redid it
    assert before_kill[5] == straight_losses[5]
    resumed_weights = _weights(killed_dir / f'iter_{MAX_ITERS}.pth')
    straight_weights = _weights(straight_dir / f'iter_{MAX_ITERS}.pth')
    assert resumed_weights.keys() == straight_weights.keys()
    for key, value in straight_weights.items():
        assert torch.equal(resumed_weights[key], value), f'{key} differs after resuming'


def test_resume_from_explicit_checkpoint_path_must_exist(data, tmp_path, monkeypatch, capsys):
    root, data_root = data
    config = write_random_config(root / 'missing.py', data_root, 0)
    monkeypatch.syspath_prepend(str(root))  # the config imports pause_hook
    result = run_tool_in_process('train.py', config, '--work-dir', tmp_path, '--resume',
                                 tmp_path / 'nope.pth', capsys=capsys)
    assert result.returncode == 2
    assert 'error: --resume checkpoint' in result.stderr and 'Traceback' not in result.stderr
