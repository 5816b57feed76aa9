"""mmseg's own ``tools/train.py`` and ``tools/test.py`` (what ``mim train mmseg`` runs) work
with mmvolo's configs, on both stacks: the configs name ``mmvolo.runtime``, so mmcv-lite,
weights-only resume, atomic checkpoints and RNG states all hold without mmvolo's tools; on
onedl the host hook (mmvolo-host.pth) maps ``mmseg::`` before mmseg's train.py parses the
config."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tool_helpers import REPO, make_tiny_data, tool_env, write_tiny_config

from mmvolo.checkpoint import load_checkpoint_file
from mmvolo.env import hook_pth_path


def mmseg_tool(name: str) -> Path:
    import mmseg
    return Path(mmseg.__file__).parent / '.mim' / 'tools' / name


def run_mmseg(tool: str, *args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(mmseg_tool(tool)), *map(str, args)], cwd=cwd,
                          env=tool_env(PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=300)


HOOK_MISSING = ("the host hook is not installed in this venv (python -m mmvolo.env "
                "--install-hook): mmseg's tools import mmseg.models (mmcv-lite) or parse "
                "mmseg:: bases (onedl) before any plugin code runs")


@pytest.mark.slow(seconds=40)
@pytest.mark.skipif(not os.path.isfile(hook_pth_path()), reason=HOOK_MISSING)
def test_mmseg_train_resume_and_test_with_an_mmvolo_config(tmp_path):
    if not mmseg_tool('train.py').is_file():
        pytest.skip('this mmseg install ships no tools under .mim')
    config = write_tiny_config(tmp_path / 'tiny.py', make_tiny_data(tmp_path / 'toy'), 4, 2)
    work_dir = tmp_path / 'run'
    trained = run_mmseg('train.py', config, '--work-dir', work_dir, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint = load_checkpoint_file(work_dir / 'iter_4.pth')  # weights-only
    assert {'python', 'numpy', 'torch'} <= set(checkpoint['rng_state'])

    resumed = run_mmseg('train.py', config, '--work-dir', work_dir, '--resume',
                        '--cfg-options', 'train_cfg.max_iters=6', cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resumed epoch: 0, iter: 4' in resumed.stdout + resumed.stderr
    assert (work_dir / 'last_checkpoint').read_text().endswith('iter_6.pth')
    assert not [path for path in os.listdir(work_dir) if '.tmp' in path]

    tested = run_mmseg('test.py', config, work_dir / 'iter_6.pth', '--work-dir',
                       tmp_path / 'test', cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert 'mIoU' in tested.stdout + tested.stderr
