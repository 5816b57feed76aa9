"""Writes are atomic: a failed, full-disk or killed write leaves the previous file intact and
no partial file under the final name; new files get the user's umask."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tool_helpers import REPO, make_tiny_data, run_tool, write_tiny_config

from mmvolo.checkpoint import load_checkpoint_file
from mmvolo.cli.resume import periodic_checkpoints, resolve_resume
from mmvolo.fileio import AtomicLocalBackend, atomic_path, write_bytes_atomic


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if '.tmp' in path.name)


def test_failed_write_keeps_the_old_file(tmp_path):
    dst = tmp_path / 'w.pth'
    dst.write_bytes(b'previous')
    with pytest.raises(OSError) as info:
        with atomic_path(dst) as tmp:
            Path(tmp).write_bytes(b'half')
            raise OSError(errno.ENOSPC, 'No space left on device', tmp)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(dst)
    assert dst.read_bytes() == b'previous' and leftovers(tmp_path) == []


def test_new_files_get_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        write_bytes_atomic(b'x', tmp_path / 'a.pth')
        AtomicLocalBackend().put_text('y', tmp_path / 'last_checkpoint')
    finally:
        os.umask(previous)
    assert (tmp_path / 'a.pth').stat().st_mode & 0o777 == 0o640
    assert (tmp_path / 'last_checkpoint').read_text() == 'y'


KILLED_WRITER = '''
import sys, time
from pathlib import Path
from mmvolo.fileio import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, 'wb') as stream:
        stream.write(b'new, half written')
        stream.flush()
        Path(sys.argv[2]).touch()
        time.sleep(60)
'''


def test_kill_9_mid_write_keeps_the_old_checkpoint(tmp_path):
    dst, ready = tmp_path / 'iter_8.pth', tmp_path / 'ready'
    torch.save({'w': torch.ones(1)}, dst)
    writer = subprocess.Popen([sys.executable, '-c', KILLED_WRITER, str(dst), str(ready)],
                              cwd=REPO)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert writer.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert load_checkpoint_file(dst)['w'].item() == 1.0
    # the orphaned temporary file is hidden and never taken for a checkpoint
    assert leftovers(tmp_path) and periodic_checkpoints(tmp_path) == [dst]
    assert resolve_resume(str(dst), tmp_path) == str(dst)


DISK_FULL = '''
"""Test helper: the disk fills up while the iteration-{at} checkpoint is written."""
import errno
from pathlib import Path

_write_bytes = Path.write_bytes


def write_bytes(self, data):
    if '.iter_{at}.pth.' in self.name:
        _write_bytes(self, data[:len(data) // 2])
        raise OSError(errno.ENOSPC, 'No space left on device', str(self))
    return _write_bytes(self, data)


Path.write_bytes = write_bytes
'''


@pytest.mark.slow(seconds=15)
def test_disk_full_during_a_runner_save_keeps_the_previous_checkpoint(tmp_path):
    (tmp_path / 'disk_full.py').write_text(DISK_FULL.format(at=4))
    config = write_tiny_config(tmp_path / 'tiny.py', make_tiny_data(tmp_path / 'toy'), 6, 2,
                               extra="custom_imports = dict(imports=['mmvolo.runtime', "
                               "'mmvolo', 'mmvolo.datasets.toy_shapes', 'disk_full'])\n")
    work_dir = tmp_path / 'run'
    result = run_tool('train.py', config, '--work-dir', work_dir, cwd=REPO,
                      PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    assert result.returncode == 1, result.stderr[-2000:]
    assert 'Traceback' not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and 'no space left' in errors[0] and 'iter_4.pth' in errors[0]
    assert sorted(path.name for path in work_dir.glob('*.pth')) == ['iter_2.pth']
    assert leftovers(work_dir) == []
    assert (work_dir / 'last_checkpoint').read_text().endswith('iter_2.pth')
    assert load_checkpoint_file(work_dir / 'iter_2.pth')['meta']['iter'] == 2
