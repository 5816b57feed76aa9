"""Running mmvolo's command-line tools in subprocesses, on tiny generated data."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mmvolo.datasets.toy_generator import ToySpec, generate_toy_dataset

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / 'tools'
TOY_CONFIG = REPO / 'configs' / 'volo' / 'volo-toy_upernet_1xb2-800iter_toy-64x64.py'


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for a tool subprocess: one thread, quiet, importable test helpers."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', **extra)
    return env


def tool_command(tool: str, *args: object) -> list[str]:
    return [sys.executable, str(TOOLS / tool), *map(str, args)]


def run_tool(tool: str, *args: object, cwd: Path, timeout: float = 300,
             **env: str) -> subprocess.CompletedProcess:
    """Run ``tools/<tool>`` to completion; stdout and stderr captured as text."""
    return subprocess.run(tool_command(tool, *args), cwd=cwd, env=tool_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def start_tool(tool: str, *args: object, cwd: Path, log: Path,
               **env: str) -> subprocess.Popen:
    """Start ``tools/<tool>`` in its own process group, output to ``log``."""
    with open(log, 'w') as stream:
        return subprocess.Popen(tool_command(tool, *args), cwd=cwd, env=tool_env(**env),
                                stdout=stream, stderr=subprocess.STDOUT,
                                start_new_session=True)


def make_tiny_data(root: Path, num_train: int = 16, num_val: int = 4, size: int = 32) -> Path:
    return generate_toy_dataset(root, ToySpec(num_train=num_train, num_val=num_val, size=size,
                                              seed=1))


def write_tiny_config(path: Path, data_root: Path, max_iters: int, checkpoint_interval: int,
                      size: int = 32, extra: str = '') -> Path:
    """A child of the toy config: tiny images, no random augmentation, no dropout."""
    path.write_text(f'''
_base_ = [{str(TOY_CONFIG)!r}]
data_root = {str(data_root)!r}
crop_size = ({size}, {size})
pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
            dict(type='PackSegInputs')]
model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(img_size={size}),
             decode_head=dict(dropout_ratio=0.0), auxiliary_head=dict(dropout_ratio=0.0))
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root, pipeline=pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=pipeline))
test_dataloader = val_dataloader
param_scheduler = [dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0,
                        end={max_iters})]
train_cfg = dict(max_iters={max_iters}, val_interval={max_iters})
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval={checkpoint_interval}, max_keep_ckpts=-1,
                                     save_best=None))
randomness = dict(seed=0, deterministic=True)
{extra}
''')
    return path


def single_line_error(result: subprocess.CompletedProcess) -> str:
    """The tool's error line; asserts there is exactly one and no traceback."""
    output = result.stdout + result.stderr
    assert 'Traceback' not in output, output
    errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1, output
    return errors[0]


def run_tool_in_process(tool: str, *args: object, capsys) -> subprocess.CompletedProcess:
    """Run ``tools/<tool>`` as ``__main__`` in this process (no start-up cost per run).

    ``capsys`` is pytest's fixture; an exception the tool lets escape fails the test (the
    user would see a traceback). Returns what :func:`run_tool` would.
    """
    import runpy
    from unittest import mock

    argv = [str(TOOLS / tool), *map(str, args)]
    capsys.readouterr()
    code = 0
    with mock.patch.object(sys, 'argv', argv):
        try:
            runpy.run_path(argv[0], run_name='__main__')
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out.out, out.err)
