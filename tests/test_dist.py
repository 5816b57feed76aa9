"""Two-process distributed training and testing on CPU (torchrun, gloo).

Runs ``tools/dist_train.sh`` and ``tools/dist_test.sh`` (torchrun, ``--nproc_per_node=2``)
on a tiny config: on a machine without CUDA the tools switch to gloo, DDP without device ids
and BN, say so in one line, and finish cleanly.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
from tool_helpers import REPO, TOOLS, make_tiny_data, tool_env, write_tiny_config

from mmvolo.utils import free_port

NOTICE = '[mmvolo] no CUDA: running on CPU'


def _run_script(script: str, *args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    env = tool_env(PYTHON=sys.executable, PORT=str(free_port()))
    return subprocess.run(['bash', str(TOOLS / script), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow(seconds=40)
@pytest.mark.skipif(sys.platform == 'win32', reason='bash launcher scripts')
def test_two_process_train_then_test(tmp_path):
    data = make_tiny_data(tmp_path / 'toy', num_train=8, num_val=4)
    config = write_tiny_config(tmp_path / 'tiny.py', data, max_iters=4, checkpoint_interval=4,
                               extra="model = dict(decode_head=dict(norm_cfg=dict(type='SyncBN')))")
    work_dir = tmp_path / 'work'
    train = _run_script('dist_train.sh', config, 2, '--work-dir', work_dir)
    output = train.stdout + train.stderr
    assert train.returncode == 0, output[-4000:]
    assert output.count(NOTICE) == 1, output[-4000:]
    assert 'SyncBN -> BN' in output and 'gloo backend' in output
    assert 'Iter(train) [4/4]' in output and 'mIoU' in output
    checkpoint = work_dir / 'iter_4.pth'
    assert checkpoint.is_file()
    assert 'Distributed training: True' in output, output[-4000:]

    test = _run_script('dist_test.sh', config, checkpoint, 2, '--work-dir', work_dir)
    output = test.stdout + test.stderr
    assert test.returncode == 0, output[-4000:]
    assert 'Iter(test) [2/2]' in output and 'mIoU' in output, output[-4000:]
    assert 'terminate called' not in output
