"""Training survives a hard kill: resuming ends where an uninterrupted run ends.

A tiny config (32x32 images, no random augmentation, no dropout, seeded, deterministic
algorithms) trains 8 iterations with a checkpoint every 4. One run is paused after iteration
6 and killed with SIGKILL; ``tools/train.py --resume`` continues it from iteration 4. Its
final weights must equal those of a run that was never interrupted.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from tool_helpers import REPO, make_tiny_data, run_tool, start_tool, write_tiny_config

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
EXTRA = f'''
custom_imports = dict(imports=['mmvolo', 'mmvolo.datasets.toy_shapes', 'pause_hook'],
                      allow_failed_imports=False)
custom_hooks = [dict(type='PauseAfterIter', at={PAUSE_AT})]
'''


@pytest.fixture(scope='module')
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp('resume')
    data = make_tiny_data(root / 'toy')
    (root / 'pause_hook.py').write_text(PAUSE_HOOK)
    config = write_tiny_config(root / 'tiny.py', data, MAX_ITERS, CHECKPOINT_EVERY,
                               extra=EXTRA)
    return root, config


def _wait_for(path: Path, process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f'training ended early (exit {process.returncode})'
        assert time.monotonic() < deadline, f'no {path.name} after {timeout} s'
        time.sleep(0.5)


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict']


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(setup):
    root, config = setup
    env = {'PYTHONPATH': os.pathsep.join([str(root), str(REPO)])}
    killed_dir, straight_dir = root / 'killed', root / 'straight'
    marker = root / 'paused'
    # the uninterrupted run, alongside the one that will be killed
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

    resumed = run_tool('train.py', config, '--work-dir', killed_dir, '--resume', cwd=REPO,
                       timeout=300, **env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f'resumed epoch: 0, iter: {CHECKPOINT_EVERY}' in log
    assert f'Iter(train) [{CHECKPOINT_EVERY + 1}/{MAX_ITERS}]' in log
    assert f'Iter(train) [{CHECKPOINT_EVERY}/{MAX_ITERS}]' not in log
    assert straight.wait(timeout=300) == 0, (root / 'straight.log').read_text()[-3000:]

    resumed_weights = _weights(killed_dir / f'iter_{MAX_ITERS}.pth')
    straight_weights = _weights(straight_dir / f'iter_{MAX_ITERS}.pth')
    assert resumed_weights.keys() == straight_weights.keys()
    for key, value in straight_weights.items():
        torch.testing.assert_close(resumed_weights[key], value, rtol=1e-5, atol=1e-6,
                                   msg=f'{key} differs after resuming')
    first = _weights(killed_dir / f'iter_{CHECKPOINT_EVERY}.pth')
    assert any(not torch.equal(first[key], value) for key, value in straight_weights.items()
               if value.is_floating_point()), 'training after the resume changed nothing'


def test_resume_from_explicit_checkpoint_path_must_exist(setup, tmp_path):
    root, config = setup
    result = run_tool('train.py', config, '--work-dir', tmp_path, '--resume',
                      tmp_path / 'nope.pth', cwd=REPO, timeout=120,
                      PYTHONPATH=os.pathsep.join([str(root), str(REPO)]))
    assert result.returncode == 2
    assert 'error: --resume checkpoint' in result.stderr and 'Traceback' not in result.stderr


