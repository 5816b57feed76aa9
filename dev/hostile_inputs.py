"""Feed mmvolo's tools and library bad and hostile inputs; classify what happens to each.

    python dev/hostile_inputs.py [--scratch DIR] [--out REPORT.md] [--only SUBSTRING] [--fresh]

A development harness (not a user tool). Everything is written under the scratch folder
(default ``$TMPDIR/mmvolo-hostile``: fixtures, one folder per case, logs, the report).
Each case runs one subprocess (a tool in tools/ or a short ``python -c`` snippet calling
library code), sequentially, with ``OMP_NUM_THREADS=1`` and a 120 s timeout. Outcomes:

- ``clean-error``: nonzero exit, no traceback, exactly one stderr line ``error: ...`` (tools),
  or exactly one line ``<ValueError/TypeError subclass> <message>`` printed by the snippet;
- ``correct``: exit 0 and the case's own check of the result passes (for ``--trust`` cases:
  the payload ran because the user asked for it);
- ``traceback``: 'Traceback' anywhere in the output;
- ``silent-wrong``: exit 0 but the result is wrong (a bad value accepted silently);
- ``data-loss``: a watched file (an input or a previous output) changed or vanished, or a
  ``.tmp`` file was left behind;
- ``code-exec``: a hostile pickle's payload ran (its marker file exists) without ``--trust``;
- ``other-error``: nonzero exit without a traceback, but not one clean error line;
- ``timeout``: the subprocess ran past its limit.

The report is a markdown table (case | expected | outcome | first line of the error or a
note), totals per outcome, and the command and first output lines of every case whose
outcome is traceback, silent-wrong, data-loss or code-exec.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / 'tools'
TOY_CONFIG = REPO / 'configs' / 'volo' / 'volo-toy_upernet_1xb2-800iter_toy-64x64.py'
#: The scratch folder (``--scratch``); set once in :func:`main` before any case runs.
ROOT = Path(tempfile.gettempdir()) / 'mmvolo-hostile'
PYTHON = sys.executable
TIMEOUT_S = 120
NOBODY = ('setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--')
#: The snippet's line before the one-line exception it caught.
EXC_SENTINEL = '@@caught@@'
#: Outcomes that are findings (reported in detail).
BAD_OUTCOMES = ('traceback', 'silent-wrong', 'data-loss', 'code-exec')
OUTCOMES = ('clean-error', 'correct', *BAD_OUTCOMES, 'other-error', 'timeout')
#: The toy backbone, as in the toy config (fast to build and run).
TOY_ARCH = ("dict(layers=(1, 1, 1, 1), embed_dims=(32, 64, 64, 64), num_heads=(1, 2, 2, 2), "
            "stem_hidden_dims=16)")


# ------------------------------------------------------------------------------------------
# Cases, runs and outcomes
# ------------------------------------------------------------------------------------------
@dataclass
class Run:
    """What one subprocess did."""
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


#: A check of a run that exited 0: None if the result is right, else what is wrong.
Check = Callable[[Run], Optional[str]]


@dataclass
class Case:
    """One hostile input: the command, what should happen and how to tell."""
    name: str
    group: str
    command: list[str]
    expected: str = 'clean-error'
    check: Check | None = None
    watch: list[Path] = field(default_factory=list)
    scan: list[Path] = field(default_factory=list)
    marker: Path | None = None
    trusted: bool = False
    snippet: bool = False
    must_mention: str | None = None
    note: str = ''


@dataclass
class Result:
    case: Case
    outcome: str
    detail: str
    run: Run

    @property
    def matches(self) -> bool:
        return self.outcome == self.case.expected and not self.detail.startswith('(!)')


def fingerprint(paths: Iterable[Path]) -> dict[str, str | None]:
    """{file: sha256 or None if missing} of the watched files (folders: every file in them)."""
    prints: dict[str, str | None] = {}
    for path in paths:
        files = sorted(p for p in path.rglob('*') if p.is_file()) if path.is_dir() else [path]
        for file in files:
            prints[str(file)] = _sha256(file) if file.is_file() else None
    return prints


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for block in iter(lambda: stream.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def tmp_files(folders: Iterable[Path]) -> set[str]:
    """Names containing '.tmp' anywhere under ``folders``."""
    found = set()
    for folder in folders:
        if folder.is_dir():
            found |= {str(p) for p in folder.rglob('*') if '.tmp' in p.name}
    return found


def run_command(command: list[str], cwd: Path) -> Run:
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               HOME=str(ROOT / 'home'), PYTHONDONTWRITEBYTECODE='1')
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S, errors='replace')
    except subprocess.TimeoutExpired as expired:
        return Run(-9, _text(expired.stdout), _text(expired.stderr) + '\n[timeout]',
                   time.perf_counter() - start)
    return Run(done.returncode, done.stdout, done.stderr, time.perf_counter() - start)


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors='replace')
    return data or ''


def execute(case: Case, retries: int = 3) -> Result:
    """Run ``case``; rerun it (after a pause) while mmvolo itself fails to import, which
    happens while someone edits the working tree under a long run."""
    result = execute_once(case)
    for _ in range(retries):
        if not tree_broken(result):
            break
        time.sleep(20)
        result = execute_once(case)
        result.detail = f'(retried) {result.detail}' if not tree_broken(result) else result.detail
    return result


def tree_broken(result: Result) -> bool:
    """A traceback of mmvolo's own code failing to import (not the input's fault)."""
    return result.outcome == 'traceback' and result.detail.startswith(
        ('ImportError', 'ModuleNotFoundError', 'SyntaxError', 'IndentationError'))


def execute_once(case: Case) -> Result:
    """Run ``case`` in its own folder and classify what happened."""
    folder = case_dir(case.name)
    if case.marker is not None and case.marker.exists():
        case.marker.unlink()
    before = fingerprint(case.watch)
    tmp_before = tmp_files(case.scan)
    run = run_command(case.command, folder)
    (ROOT / 'logs').mkdir(parents=True, exist_ok=True)
    (ROOT / 'logs' / f'{case.name}.log').write_text(
        f'$ {display_command(case)}\nrc={run.rc} ({run.seconds:.1f}s)\n--- stdout\n'
        f'{run.stdout}\n--- stderr\n{run.stderr}\n')
    lost = [path for path, digest in before.items() if fingerprint([Path(path)]).get(path)
            != digest]
    left = sorted(tmp_files(case.scan) - tmp_before)
    outcome, detail = classify(case, run, lost, left)
    if case.must_mention and outcome == 'clean-error' and case.must_mention not in detail:
        detail = f'(!) does not mention {case.must_mention!r}: {detail}'
    return Result(case, outcome, detail, run)


def classify(case: Case, run: Run, lost: list[str], left: list[str]) -> tuple[str, str]:
    """(outcome, first line of the error or a note) of one run."""
    if case.marker is not None and case.marker.exists():
        if case.trusted:
            return 'correct', f'payload ran as asked (--trust); exit {run.rc}'
        return 'code-exec', f'payload ran: {case.marker} exists (exit {run.rc})'
    if lost or left:
        what = [f'changed/removed {p}' for p in lost] + [f'left {p}' for p in left]
        return 'data-loss', '; '.join(what)
    if run.rc == -9:
        return 'timeout', f'ran past {TIMEOUT_S}s'
    if 'Traceback' in run.output:
        return 'traceback', last_exception_line(run.output)
    if run.rc == 0:
        return exit_zero_outcome(case, run)
    errors = error_lines(case, run)
    if len(errors) == 1:
        return 'clean-error', errors[0]
    first = next((line for line in run.stderr.splitlines() if line.strip()), '(no stderr)')
    return 'other-error', f'exit {run.rc}, {len(errors)} error lines; stderr: {first}'


def exit_zero_outcome(case: Case, run: Run) -> tuple[str, str]:
    if case.trusted:
        return 'silent-wrong', '--trust given but the payload did not run (exit 0)'
    if case.check is None:
        return 'silent-wrong', f'exit 0, accepted: {last_line(run.stdout) or "(no output)"}'
    problem = case.check(run)
    if problem is None:
        return 'correct', last_line(run.stdout) or 'exit 0'
    return 'silent-wrong', problem


def error_lines(case: Case, run: Run) -> list[str]:
    """The clean error lines: ``error: ...`` on stderr, or the snippet's caught exception."""
    if not case.snippet:
        return [line for line in run.stderr.splitlines() if line.startswith('error: ')]
    if EXC_SENTINEL not in run.stdout:
        return []
    return [line for line in run.stdout.split(EXC_SENTINEL, 1)[1].splitlines() if line.strip()]


def last_exception_line(output: str) -> str:
    """The exception line of the last traceback in ``output``."""
    lines = [line for line in output.splitlines() if line.strip()]
    start = max(i for i, line in enumerate(lines) if 'Traceback' in line)
    tail = [line for line in lines[start + 1:] if not line.startswith((' ', '\t'))]
    return tail[0][:240] if tail else lines[start]


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ''


def case_dir(name: str) -> Path:
    folder = ROOT / 'cases' / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def display_command(case: Case) -> str:
    if case.snippet:
        return f'{PYTHON} -c <snippet>\n' + textwrap.indent(case.command[-1].strip(), '    ')
    return shlex.join(case.command)


# ------------------------------------------------------------------------------------------
# Command builders
# ------------------------------------------------------------------------------------------
def tool(script: str, *args: object) -> list[str]:
    return [PYTHON, str(TOOLS / script), *map(str, args)]


def snippet(body: str, setup: str = '') -> list[str]:
    """``python -c``: run ``body``; a ValueError/TypeError is printed as one line, exit 3."""
    code = (f'import sys\n{textwrap.dedent(setup)}\ntry:\n'
            f'{textwrap.indent(textwrap.dedent(body).strip(), "    ")}\n'
            'except (ValueError, TypeError) as e:\n'
            f'    print({EXC_SENTINEL!r})\n'
            '    print(type(e).__name__, e)\n'
            '    sys.exit(3)\n')
    return [PYTHON, '-c', code]


def output_has(*needles: str) -> Check:
    def check(run: Run) -> str | None:
        missing = [needle for needle in needles if needle.lower() not in run.output.lower()]
        return f'output lacks {missing}' if missing else None
    return check


def files_are(folder: Path, expected: set[str]) -> Check:
    """The folder holds exactly ``expected`` (relative paths of files)."""
    def check(run: Run) -> str | None:
        found = {str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file()}
        return None if found == expected else f'wrote {sorted(found)}, expected {sorted(expected)}'
    return check


# ------------------------------------------------------------------------------------------
# Fixtures: tiny data, a trained checkpoint, hostile and broken files
# ------------------------------------------------------------------------------------------
@dataclass
class Fixtures:
    data: Path
    config: Path
    train_dir: Path
    ckpt: Path
    ckpt2: Path
    d1: Path
    images: Path


def tiny_config(path: Path, data_root: Path, max_iters: int, interval: int,
                extra: str = '') -> Path:
    """A child of the toy config: 32x32 images, no augmentation, few iterations."""
    path.write_text(textwrap.dedent(f'''\
        _base_ = [{str(TOY_CONFIG)!r}]
        data_root = {str(data_root)!r}
        crop_size = (32, 32)
        pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                    dict(type='PackSegInputs')]
        model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(img_size=32),
                     decode_head=dict(dropout_ratio=0.0), auxiliary_head=dict(dropout_ratio=0.0))
        train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root,
                                                           pipeline=pipeline))
        val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=pipeline))
        test_dataloader = val_dataloader
        param_scheduler = [dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False,
                                begin=0, end={max_iters})]
        train_cfg = dict(max_iters={max_iters}, val_interval={max_iters})
        default_hooks = dict(logger=dict(interval=1),
                             checkpoint=dict(interval={interval}, max_keep_ckpts=-1,
                                             save_best=None))
        randomness = dict(seed=0, deterministic=True)
        ''') + extra)
    return path


def prepare(fresh: bool) -> Fixtures:
    """Data, a 4-iteration training run (iter_2 and iter_4) and a VOLO-D1 state dict."""
    from mmvolo.datasets.toy_generator import ToySpec, generate_toy_dataset

    fixtures = ROOT / 'fixtures'
    if fresh and fixtures.exists():
        shutil.rmtree(fixtures)
    fixtures.mkdir(parents=True, exist_ok=True)
    (ROOT / 'home').mkdir(exist_ok=True)
    os.chmod(ROOT / 'home', 0o777)
    data = fixtures / 'data'
    if not data.exists():
        generate_toy_dataset(data, ToySpec(num_train=8, num_val=2, size=32, seed=1))
    config = tiny_config(fixtures / 'tiny.py', data, max_iters=4, interval=2)
    train_dir = fixtures / 'train'
    ckpt = train_dir / 'iter_4.pth'
    if not ckpt.exists():
        run = run_command(tool('train.py', config, '--work-dir', train_dir), REPO)
        if run.rc != 0 or not ckpt.exists():
            sys.exit(f'training the fixture checkpoint failed:\n{run.stderr[-3000:]}')
    d1 = fixtures / 'volo_d1.pth'
    if not d1.exists():
        save_d1_state_dict(d1)
    images = fixtures / 'images'
    images.mkdir(exist_ok=True)
    return Fixtures(data, config, train_dir, ckpt, train_dir / 'iter_2.pth', d1, images)


def save_d1_state_dict(path: Path) -> None:
    """An official-layout VOLO-D1 state dict (random weights, with a classification head)."""
    import torch
    from timm.models.volo import volo_d1_224

    torch.save(volo_d1_224(pretrained=False).state_dict(), path)


def load_trusted(path: Path) -> dict:
    import torch

    return torch.load(path, map_location='cpu', weights_only=False)


class Call:
    """Pickles as ``func(*args)``: the building block of a hostile pickle's call chain."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args

    def __call__(self, *args: object) -> None:  # pickle wants a callable ``func``
        raise NotImplementedError


def payload(kind: str, marker: Path) -> Call:
    """An object whose unpickling creates ``marker``."""
    code = f'open({str(marker)!r}, "w").close()'
    if kind in ('system', 'legacy'):
        return Call(os.system, f'touch {shlex.quote(str(marker))}')
    if kind == 'exec':
        return Call(exec, code)
    if kind == 'getattr':
        from mmengine.logging import HistoryBuffer

        init = Call(getattr, HistoryBuffer, '__init__')
        module_globals = Call(getattr, init, '__globals__')
        builtins_dict = Call(Call(getattr, module_globals, 'get'), '__builtins__')
        exec_ = Call(Call(getattr, builtins_dict, 'get'), 'exec')
        return Call(exec_, code)
    raise ValueError(kind)


def hostile_file(kind: str, marker: Path, dst: Path, base: Path) -> Path:
    """``base`` (a real checkpoint) with a payload added, saved as ``dst``."""
    import torch

    checkpoint = load_trusted(base)
    checkpoint = dict(checkpoint) if isinstance(checkpoint, dict) else {'weights': checkpoint}
    checkpoint['extra'] = payload(kind, marker)
    torch.save(checkpoint, dst, _use_new_zipfile_serialization=kind != 'legacy')
    return dst


def broken_file(kind: str, dst: Path, fx: Fixtures) -> Path:
    """A file that is not a usable checkpoint, of the given kind."""
    import random

    import torch

    rng = random.Random(kind)
    if kind == 'empty':
        dst.write_bytes(b'')
    elif kind == 'text':
        dst.write_text('these are not the weights you are looking for\n')
    elif kind == 'json':
        dst.write_text(json.dumps({'state_dict': {'backbone.x': [1, 2, 3]}}))
    elif kind == 'random':
        dst.write_bytes(b'\x13' + bytes(rng.randrange(256) for _ in range(4095)))
    elif kind == 'pickle-garbage':
        dst.write_bytes(b'\x80\x02' + bytes(rng.randrange(256) for _ in range(4094)))
    elif kind == 'truncated':
        data = fx.ckpt.read_bytes()
        dst.write_bytes(data[:len(data) // 2])
    elif kind == 'resnet':
        torch.save({'state_dict': resnet_like_state_dict(), 'meta': {}}, dst)
    elif kind == 'bare-volo':
        weights = load_trusted(fx.ckpt)['state_dict']
        torch.save({key[len('backbone.'):]: value for key, value in weights.items()
                    if key.startswith('backbone.')}, dst)
    else:
        raise ValueError(kind)
    return dst


def resnet_like_state_dict() -> dict:
    import torch

    shapes = {'conv1.weight': (64, 3, 7, 7), 'bn1.weight': (64,), 'bn1.bias': (64,),
              'layer1.0.conv1.weight': (64, 64, 3, 3), 'layer1.0.bn1.weight': (64,),
              'layer4.1.conv2.weight': (512, 512, 3, 3), 'fc.weight': (1000, 512),
              'fc.bias': (1000,)}
    return {key: torch.randn(shape) for key, shape in shapes.items()}


def write_image(path: Path, height: int, width: int) -> Path:
    import cv2
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    cv2.imwrite(str(path), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    return path


# ------------------------------------------------------------------------------------------
# The cases
# ------------------------------------------------------------------------------------------
PAYLOADS = ('system', 'exec', 'getattr', 'legacy')
BROKEN = ('empty', 'text', 'json', 'random', 'pickle-garbage', 'truncated', 'resnet',
          'bare-volo')


def marker_for(name: str) -> Path:
    return ROOT / f'pwned_{name}'


def resume_auto_dir(folder: Path, checkpoint: Path, named: str) -> Path:
    """A work dir holding ``checkpoint`` as iter_6.pth and a last_checkpoint naming it."""
    work = folder / 'work'
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(checkpoint, work / 'iter_6.pth')
    (work / 'last_checkpoint').write_text(named)
    return work


def checkpoint_consumers(fx: Fixtures, name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(consumer, command) for every way a checkpoint file reaches mmvolo code."""
    folder = case_dir(name)
    image = write_image(folder / 'in' / 'img.jpg', 32, 32)
    work = resume_auto_dir(folder, path, str(folder / 'work' / 'iter_6.pth'))
    return [
        ('test', tool('test.py', fx.config, path, '--work-dir', folder / 'test_work')),
        ('inference', tool('inference.py', fx.config, path, image, '--out-dir', folder / 'out')),
        ('train-load_from', tool('train.py', fx.config, '--work-dir', folder / 'lf_work',
                                 '--cfg-options', f'load_from={path}')),
        ('train-resume', tool('train.py', fx.config, '--work-dir', folder / 'res_work',
                              '--resume', path)),
        ('train-resume-auto', tool('train.py', fx.config, '--work-dir', work, '--resume')),
        ('converter', tool('model_converters/volo2mmseg.py', path, folder / 'conv.pth')),
        ('init_cfg', snippet(f'''
            m = VOLO(arch={TOY_ARCH}, img_size=32,
                     init_cfg=dict(type='Pretrained', checkpoint={str(path)!r}))
            m.init_weights()
            print('loaded')''', 'from mmvolo import VOLO')),
        ('mmengine', snippet(f'''
            load_checkpoint(VOLO(arch={TOY_ARCH}, img_size=32), {str(path)!r})
            print('loaded')''',
            'import mmvolo.runtime\nfrom mmvolo import VOLO\n'
            'from mmengine.runner import load_checkpoint')),
    ]


def hostile_cases(fx: Fixtures) -> list[Case]:
    cases = []
    for kind in PAYLOADS:
        for consumer in ('test', 'inference', 'train-load_from', 'train-resume',
                         'train-resume-auto', 'converter', 'init_cfg', 'mmengine'):
            name = f'pickle-{kind}-{consumer}'
            marker = marker_for(name)
            path = hostile_file(kind, marker, case_dir(name) / f'evil_{kind}.pth', fx.ckpt)
            command = dict(checkpoint_consumers(fx, name, path))[consumer]
            cases.append(Case(name, 'hostile pickle', command, marker=marker, watch=[path],
                              snippet=consumer in ('init_cfg', 'mmengine')))
    cases += hostile_extra_cases(fx)
    return cases


def hostile_extra_cases(fx: Fixtures) -> list[Case]:
    """Other roads for a payload: seedless resume, a marker outside the work dir, a file
    named .safetensors, the init_cfg of a training run, mmseg's init_model."""
    cases = []
    name = 'pickle-system-resume-seedless'
    path = hostile_file('system', marker_for(name), case_dir(name) / 'evil.pth', fx.ckpt)
    cases.append(Case(name, 'hostile pickle', tool(
        'train.py', fx.config, '--work-dir', case_dir(name) / 'work', '--resume', path,
        '--cfg-options', 'randomness.seed=None'), marker=marker_for(name), watch=[path],
        note='seed unset: checkpoint_meta reads the file before the Runner'))
    name = 'pickle-system-marker-outside-workdir'
    path = hostile_file('system', marker_for(name), case_dir(name) / 'elsewhere.pth', fx.ckpt)
    work = case_dir(name) / 'work'
    work.mkdir(exist_ok=True)
    (work / 'last_checkpoint').write_text(str(path))
    cases.append(Case(name, 'hostile pickle', tool('train.py', fx.config, '--work-dir', work,
                                                   '--resume'), marker=marker_for(name)))
    name = 'pickle-system-named-safetensors'
    path = hostile_file('system', marker_for(name), case_dir(name) / 'evil.safetensors',
                        fx.ckpt)
    cases.append(Case(name, 'hostile pickle', tool(
        'model_converters/volo2mmseg.py', path, case_dir(name) / 'out.pth'),
        marker=marker_for(name)))
    name = 'pickle-system-train-init_cfg'
    path = hostile_file('system', marker_for(name), case_dir(name) / 'evil.pth', fx.ckpt)
    cases.append(Case(name, 'hostile pickle', tool(
        'train.py', fx.config, '--work-dir', case_dir(name) / 'work', '--cfg-options',
        'model.backbone.init_cfg.type=Pretrained',
        f'model.backbone.init_cfg.checkpoint={path}'), marker=marker_for(name)))
    name = 'pickle-system-mmseg-init_model'
    path = hostile_file('system', marker_for(name), case_dir(name) / 'evil.pth', fx.ckpt)
    cases.append(Case(name, 'hostile pickle', snippet(
        f'init_model({str(fx.config)!r}, {str(path)!r}, device="cpu")\nprint("loaded")',
        'import mmvolo.runtime\nfrom mmseg.apis import init_model'),
        marker=marker_for(name), snippet=True))
    name = 'pickle-system-trust-other-file'
    path = hostile_file('system', marker_for(name), case_dir(name) / 'evil.pth', fx.ckpt)
    cases.append(Case(name, 'hostile pickle', tool(
        'train.py', fx.config, '--work-dir', case_dir(name) / 'work', '--trust',
        '--cfg-options', f'load_from={fx.ckpt}', 'model.backbone.init_cfg.type=Pretrained',
        f'model.backbone.init_cfg.checkpoint={path}'), marker=marker_for(name),
        note='--trust names load_from, not the init_cfg file'))
    return cases


def trust_cases(fx: Fixtures) -> list[Case]:
    """``--trust``: the payload must run (the user asked); expected ``correct``."""
    cases = []
    for consumer in ('test', 'inference', 'train-load_from', 'train-resume',
                     'train-resume-auto', 'converter'):
        name = f'trust-system-{consumer}'
        marker = marker_for(name)
        base = fx.d1 if consumer == 'converter' else fx.ckpt
        path = hostile_file('system', marker, case_dir(name) / 'evil.pth', base)
        command = dict(checkpoint_consumers(fx, name, path))[consumer] + ['--trust']
        cases.append(Case(name, 'trust', command, expected='correct', marker=marker,
                          trusted=True))
    return cases


def broken_checkpoint_cases(fx: Fixtures) -> list[Case]:
    cases = []
    for kind in BROKEN:
        for consumer in ('test', 'inference', 'converter', 'train-load_from', 'train-resume',
                         'init_cfg'):
            name = f'notckpt-{kind}-{consumer}'
            path = broken_file(kind, case_dir(name) / f'{kind}.pth', fx)
            command = dict(checkpoint_consumers(fx, name, path))[consumer]
            intended = kind == 'bare-volo' and consumer == 'init_cfg'  # what it is for
            cases.append(Case(name, 'not a checkpoint', command, watch=[path],
                              scan=[case_dir(name)], snippet=consumer == 'init_cfg',
                              expected='correct' if intended else 'clean-error',
                              check=output_has('loaded') if intended else None))
    return cases


def _symlink_to(src: Path) -> Path:
    link = src.with_name('link.pth')
    link.unlink(missing_ok=True)
    link.symlink_to(src)
    return link


def _hardlink_to(src: Path) -> Path:
    hard = src.with_name('hard.pth')
    hard.unlink(missing_ok=True)
    os.link(src, hard)
    return hard


def converter_cases(fx: Fixtures) -> list[Case]:
    conv = 'model_converters/volo2mmseg.py'
    cases = []
    for name, make_dst in (('conv-same-path', lambda src: src),
                           ('conv-symlink-to-src', _symlink_to),
                           ('conv-hardlink-to-src', _hardlink_to)):
        folder = case_dir(name)
        src = folder / 'src.pth'
        shutil.copy(fx.d1, src)
        cases.append(Case(name, 'converter', tool(conv, src, make_dst(src)), watch=[src],
                          scan=[folder]))
    for size in (['0'], ['-16'], ['17'], ['100000'], ['16', '16', '16'], ['32', '0']):
        name = f'conv-img-size-{"x".join(size)}'
        out = case_dir(name) / 'out.pth'
        cases.append(Case(name, 'converter', tool(conv, fx.d1, out, '--img-size', *size),
                          scan=[case_dir(name)], check=lambda run, out=out: (
                              None if not out.exists() else f'{out} written')))
    out = case_dir('conv-img-size-224x320') / 'out.pth'
    cases.append(Case('conv-img-size-224x320', 'converter', tool(
        conv, fx.d1, out, '--img-size', '224', '320'), expected='correct',
        check=pos_embed_is(out, (1, 14, 20, 384)), scan=[out.parent]))
    out = case_dir('conv-ema-missing') / 'out.pth'
    cases.append(Case('conv-ema-missing', 'converter', tool(conv, fx.d1, out, '--ema'),
                      scan=[out.parent]))
    folder = case_dir('conv-into-file-as-folder')
    blocker = folder / 'afile'
    blocker.write_text('I am a file\n')
    cases.append(Case('conv-into-file-as-folder', 'converter', tool(
        conv, fx.d1, blocker / 'out.pth'), watch=[blocker], scan=[folder]))
    folder = case_dir('conv-dst-is-folder')
    (folder / 'dst').mkdir(exist_ok=True)
    cases.append(Case('conv-dst-is-folder', 'converter', tool(conv, fx.d1, folder / 'dst'),
                      scan=[folder]))
    cases += converter_write_cases(fx)
    return cases


def converter_write_cases(fx: Fixtures) -> list[Case]:
    conv = 'model_converters/volo2mmseg.py'
    cases = []
    folder = case_dir('conv-readonly-folder-nobody')
    ro = folder / 'ro'
    ro.mkdir(exist_ok=True)
    os.chmod(folder, 0o755)
    os.chmod(ro, 0o555)
    src = folder / 'src.pth'
    shutil.copy(fx.d1, src)
    os.chmod(src, 0o644)
    cases.append(Case('conv-readonly-folder-nobody', 'converter',
                      [*NOBODY, *tool(conv, src, ro / 'out.pth')], scan=[folder],
                      note='run as uid 65534 (root ignores the read-only bit)'))
    folder = case_dir('conv-bad-src-keeps-old-dst')
    old = folder / 'out.pth'
    shutil.copy(fx.d1, old)
    bad = broken_file('text', folder / 'bad.pth', fx)
    cases.append(Case('conv-bad-src-keeps-old-dst', 'converter', tool(conv, bad, old),
                      watch=[old, bad], scan=[folder]))
    folder = case_dir('conv-missing-src')
    cases.append(Case('conv-missing-src', 'converter', tool(
        conv, folder / 'nope.pth', folder / 'out.pth'), scan=[folder]))
    folder = case_dir('conv-src-is-folder')
    cases.append(Case('conv-src-is-folder', 'converter', tool(conv, folder, folder / 'o.pth'),
                      scan=[folder]))
    folder = case_dir('conv-segmentor-ckpt')
    cases.append(Case('conv-segmentor-ckpt', 'converter', tool(conv, fx.ckpt, folder / 'o.pth'),
                      scan=[folder], watch=[fx.ckpt],
                      note='toy arch: no official variant fits'))
    folder = case_dir('conv-garbage-safetensors')
    bad = folder / 'bad.safetensors'
    bad.write_bytes(b'\xff' * 8 + b'{"x": 1}' * 10)
    cases.append(Case('conv-garbage-safetensors', 'converter', tool(conv, bad, folder / 'o.pth'),
                      scan=[folder]))
    return cases


def pos_embed_is(path: Path, shape: tuple[int, ...]) -> Check:
    def check(run: Run) -> str | None:
        import torch

        if not path.exists():
            return f'{path} not written'
        weights = torch.load(path, map_location='cpu', weights_only=True)
        got = tuple(weights['pos_embed'].shape)
        return None if got == shape else f'pos_embed {got}, expected {shape}'
    return check


def backbone_cases() -> list[Case]:
    build = f'VOLO(arch={TOY_ARCH}, img_size=32'
    setup = 'import torch\nfrom mmvolo import VOLO'
    specs = [
        ('arch-d9', "VOLO(arch='d9')"),
        ('arch-int', 'VOLO(arch=5)'),
        ('arch-dict-missing-keys', "VOLO(arch=dict(layers=(1, 1, 1, 1)))"),
        ('batch-0', f'{build})(torch.zeros(0, 3, 32, 32))'),
        ('uint8-input', f'{build})(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))'),
        ('float64-input', f'{build})(torch.zeros(1, 3, 32, 32, dtype=torch.float64))'),
        ('1-channel-input', f'{build})(torch.zeros(1, 1, 32, 32))'),
        ('3d-input', f'{build})(torch.zeros(3, 32, 32))'),
        ('drop_path-neg', f'{build}, drop_path_rate=-0.5)'),
        ('drop_path-1.5', f'{build}, drop_path_rate=1.5)'),
        ('drop_path-nan', f"{build}, drop_path_rate=float('nan'))"),
        ('attn_drop-bool', f'{build}, attn_drop_rate=True)'),
        ('img_size-0', f'VOLO(arch={TOY_ARCH}, img_size=0)'),
        ('img_size-triple', f'VOLO(arch={TOY_ARCH}, img_size=(32, 32, 32))'),
        ('in_channels-0', f'{build}, in_channels=0)'),
        ('out_indices-0-7', f'{build}, out_indices=(0, 7))'),
        ('out_indices-1.5', f'{build}, out_indices=(1.5,))'),
        ('out_indices-empty', f'{build}, out_indices=())'),
        ('frozen_stages-9', f'{build}, frozen_stages=9)'),
    ]
    cases = [Case(f'volo-{name}', 'backbone', snippet(f'{body}\nprint("accepted")', setup),
                  snippet=True) for name, body in specs]
    shapes = [[1, 32, 5, 9], [1, 32, 3, 5], [1, 64, 2, 3], [1, 64, 1, 2]]
    cases.append(Case('volo-odd-17x33', 'backbone', snippet(
        f'print(json.dumps([list(o.shape) for o in {build})(torch.zeros(1, 3, 17, 33))]))',
        setup + '\nimport json'), expected='correct', snippet=True,
        check=stdout_json_is(shapes)))
    raw = [[1, 32, 3, 5], [1, 64, 2, 3], [1, 64, 2, 3], [1, 64, 2, 3]]
    cases.append(Case('volo-odd-17x33-raw', 'backbone', snippet(
        f'print(json.dumps([list(o.shape) for o in {build}, feature_pyramid=False)('
        'torch.zeros(1, 3, 17, 33))]))', setup + '\nimport json'), expected='correct',
        snippet=True, check=stdout_json_is(raw)))
    cases.append(Case('volo-1x1-input', 'backbone', snippet(
        f'print(json.dumps([list(o.shape) for o in {build})(torch.zeros(1, 3, 1, 1))]))',
        setup + '\nimport json'), expected='correct', snippet=True,
        check=stdout_json_is([[1, 32, 1, 1], [1, 32, 1, 1], [1, 64, 1, 1], [1, 64, 1, 1]])))
    return cases


def stdout_json_is(expected: object) -> Check:
    def check(run: Run) -> str | None:
        try:
            got = json.loads(last_line(run.stdout))
        except ValueError:
            return f'no JSON result: {last_line(run.stdout)}'
        return None if got == expected else f'got {got}, expected {expected}'
    return check


def config_cases(fx: Fixtures) -> list[Case]:
    folder = case_dir('configs')
    broken = folder / 'broken.py'
    broken.write_text('model = dict(type="EncoderDecoder",\n')
    no_model = folder / 'no_model.py'
    no_model.write_text('a = 1\n')
    model_int = folder / 'model_int.py'
    model_int.write_text('model = 5\n')
    bad_base = folder / 'bad_base.py'
    bad_base.write_text("_base_ = ['./does_not_exist.py']\n")
    bad_import = tiny_config(folder / 'bad_import.py', fx.data, 2, 2,
                             "custom_imports = dict(imports=['no_such_module_xyz'])\n")
    d9 = tiny_config(folder / 'arch_d9.py', fx.data, 2, 2,
                     "model['backbone']['arch'] = 'd9'\n")
    unknown = tiny_config(folder / 'unknown_type.py', fx.data, 2, 2,
                          "model['type'] = 'NoSuchSegmentor'\n")
    afile = folder / 'afile'
    afile.write_text('x\n')
    work = ['--work-dir', folder / 'work']
    specs: list[tuple[str, list[object]]] = [
        ('missing-config', [folder / 'nope.py']),
        ('config-is-folder', [folder]),
        ('broken-config', [broken]),
        ('config-without-model', [no_model]),
        ('config-model-int', [model_int]),
        ('config-missing-base', [bad_base]),
        ('config-bad-custom-import', [bad_import]),
        ('config-unknown-model-type', [unknown]),
        ('out_indices-0-7', [fx.config, *work, '--cfg-options',
                             'model.backbone.out_indices=[0,7]']),
        ('cfg-options-unclosed', [fx.config, *work, '--cfg-options', 'a=[1,2']),
        ('cfg-options-mismatched', [fx.config, *work, '--cfg-options', 'a=(]']),
        ('cfg-options-noequals', [fx.config, *work, '--cfg-options', 'noequals']),
        ('missing-data-root', [fx.config, *work, '--cfg-options',
                               'train_dataloader.dataset.data_root=/nonexistent/data']),
        ('wrong-arch-name', [d9, *work]),
        ('amp-without-cuda', [fx.config, *work, '--amp']),
        ('work-dir-is-file', [fx.config, '--work-dir', afile]),
    ]
    cases = [Case(f'train-{name}', 'train config', tool('train.py', *args), watch=[afile])
             for name, args in specs]
    cases.append(truncated_resume_case(fx))
    return cases


def truncated_resume_case(fx: Fixtures) -> Case:
    """iter_2 intact, iter_4 (named by last_checkpoint) cut in half: must name iter_2."""
    folder = case_dir('train-resume-truncated-last')
    work = folder / 'work'
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    shutil.copy(fx.ckpt2, work / 'iter_2.pth')
    data = fx.ckpt.read_bytes()
    (work / 'iter_4.pth').write_bytes(data[:len(data) // 2])
    (work / 'last_checkpoint').write_text(str(work / 'iter_4.pth'))
    return Case('train-resume-truncated-last', 'train config', tool(
        'train.py', fx.config, '--work-dir', work, '--resume'),
        watch=[work / 'iter_2.pth', work / 'iter_4.pth', work / 'last_checkpoint'],
        scan=[work], must_mention='iter_2.pth')


def test_tool_cases(fx: Fixtures) -> list[Case]:
    folder = case_dir('test-tool')
    afile = folder / 'afile'
    afile.write_text('x\n')
    classes9 = tiny_config(folder / 'classes9.py', fx.data, 2, 2,
                           "model['decode_head']['num_classes'] = 9\n")
    torch_list = folder / 'tensor_only.pth'
    _save(torch_list, 'tensor')
    meta_only = folder / 'meta_only.pth'
    _save(meta_only, 'meta')
    work = ['--work-dir', folder / 'work']
    return [
        Case('test-baseline', 'test tool', tool('test.py', fx.config, fx.ckpt, *work),
             expected='correct', check=output_has('mIoU'), watch=[fx.ckpt]),
        Case('test-missing-ckpt', 'test tool', tool('test.py', fx.config, folder / 'n.pth')),
        Case('test-ckpt-is-folder', 'test tool', tool('test.py', fx.config, folder)),
        Case('test-num-classes-mismatch', 'test tool', tool('test.py', classes9, fx.ckpt,
                                                            *work)),
        Case('test-tensor-not-dict', 'test tool', tool('test.py', fx.config, torch_list)),
        Case('test-meta-only', 'test tool', tool('test.py', fx.config, meta_only)),
        Case('test-out-is-file', 'test tool', tool('test.py', fx.config, fx.ckpt, *work,
                                                   '--out', afile), watch=[afile]),
        Case('test-work-dir-is-file', 'test tool', tool('test.py', fx.config, fx.ckpt,
                                                        '--work-dir', afile), watch=[afile]),
        Case('test-show-dir-no-hook', 'test tool', tool(
            'test.py', fx.config, fx.ckpt, *work, '--show-dir', 'vis', '--cfg-options',
            'default_hooks.visualization=None')),
        Case('test-tta-no-pipeline', 'test tool', tool('test.py', fx.config, fx.ckpt, *work,
                                                       '--tta', '--cfg-options',
                                                       'tta_pipeline=None')),
    ]


def _save(path: Path, kind: str) -> None:
    import torch

    torch.save(torch.zeros(3) if kind == 'tensor' else {'meta': {'iter': 3}}, path)


def inference_cases(fx: Fixtures) -> list[Case]:
    cases = []
    infer = ['inference.py', fx.config, fx.ckpt]
    folder = case_dir('infer-out-dir-is-input-folder')
    inputs = folder / 'in'
    write_image(inputs / 'x.jpg', 32, 32)
    cases.append(Case('infer-out-dir-is-input-folder', 'inference', tool(
        *infer, inputs, '--out-dir', inputs), watch=[inputs], scan=[inputs]))
    folder = case_dir('infer-out-dir-parent-of-input')
    write_image(folder / 'in' / 'x.png', 32, 32)
    cases.append(Case('infer-out-dir-parent-of-input', 'inference', tool(
        *infer, folder / 'in' / 'x.png', '--out-dir', folder), watch=[folder / 'in'],
        scan=[folder]))
    folder = case_dir('infer-out-dir-is-symlink-to-input')
    write_image(folder / 'in' / 'x.png', 32, 32)
    link = folder / 'link'
    if not link.is_symlink():
        link.symlink_to(folder / 'in')
    cases.append(Case('infer-out-dir-is-symlink-to-input', 'inference', tool(
        *infer, folder / 'in' / 'x.png', '--out-dir', link), watch=[folder / 'in'],
        scan=[folder]))
    folder = case_dir('infer-same-names')
    for rel in ('in/a/x.jpg', 'in/b/x.jpg', 'in/a/x.png'):
        write_image(folder / rel, 32, 32)
    out = folder / 'out'
    shutil.rmtree(out, ignore_errors=True)
    cases.append(Case('infer-same-names', 'inference', tool(
        *infer, folder / 'in/a/x.jpg', folder / 'in/b/x.jpg', folder / 'in/a/x.png',
        '--out-dir', out), expected='correct', watch=[folder / 'in'], scan=[folder],
        check=files_are(out, {'a/x.jpg.png', 'a/x.png.png', 'b/x.png'})))
    folder = case_dir('infer-out-dir-inside-input')
    write_image(folder / 'in' / 'x.jpg', 32, 32)
    out = folder / 'in' / 'out'
    shutil.rmtree(out, ignore_errors=True)
    cases.append(Case('infer-out-dir-inside-input', 'inference', tool(
        *infer, folder / 'in', '--out-dir', out), expected='correct',
        watch=[folder / 'in' / 'x.jpg'], scan=[folder], check=files_are(out, {'x.png'}),
        note='out-dir below the input folder does not contain it'))
    cases += inference_bad_input_cases(fx, infer)
    return cases


def inference_bad_input_cases(fx: Fixtures, infer: list[object]) -> list[Case]:
    folder = case_dir('infer-bad-inputs')
    good = write_image(folder / 'good.jpg', 32, 32)
    text = folder / 'notes.txt'
    text.write_text('hello\n')
    fake = folder / 'fake.jpg'
    fake.write_text('not a jpeg\n')
    empty_png = folder / 'empty.png'
    empty_png.write_bytes(b'')
    truncated = folder / 'truncated.jpg'
    truncated.write_bytes(good.read_bytes()[:200])
    thin = write_image(folder / 'thin.png', 16, 4000)
    empty_dir = folder / 'empty_dir'
    empty_dir.mkdir(exist_ok=True)
    afile = folder / 'afile'
    afile.write_text('x\n')
    out = ['--out-dir', folder / 'out']
    specs: list[tuple[str, list[object]]] = [
        ('non-image-file', [text, *out]),
        ('text-named-jpg', [fake, *out]),
        ('empty-png', [empty_png, *out]),
        ('truncated-jpg', [truncated, *out]),
        ('image-16x4000', [thin, *out]),
        ('missing-input', [folder / 'nope.jpg', *out]),
        ('empty-folder', [empty_dir, *out]),
        ('out-dir-is-file', [good, '--out-dir', afile]),
        ('opacity-2', [good, *out, '--opacity', '2']),
        ('opacity-nan', [good, *out, '--opacity', 'nan']),
        ('device-cuda-absent', [good, *out, '--device', 'cuda']),
        ('device-nonsense', [good, *out, '--device', 'tpu:7']),
    ]
    cases = [Case(f'infer-{name}', 'inference', tool(*infer, *args),
                  watch=[good, text, fake, afile], scan=[folder]) for name, args in specs]
    out_dir = case_dir('infer-baseline') / 'out'
    shutil.rmtree(out_dir, ignore_errors=True)
    cases.append(Case('infer-baseline', 'inference', tool(*infer, good, '--out-dir', out_dir),
                      expected='correct', check=files_are(out_dir, {'good.png'}),
                      watch=[good], scan=[out_dir.parent]))
    return cases


def analysis_cases(fx: Fixtures) -> list[Case]:
    folder = case_dir('analysis')
    broken = folder / 'broken.py'
    broken.write_text('x = (\n')
    ops = 'analysis/benchmark_ops.py'
    model = 'analysis/benchmark_model.py'
    flops = 'analysis/get_flops.py'
    cfg = 'misc/print_config.py'
    specs: list[tuple[str, list[object]]] = [
        ('flops-shape-0-0', [flops, fx.config, '--shape', '0', '0']),
        ('flops-shape-neg', [flops, fx.config, '--shape', '-1', '5']),
        ('flops-missing-config', [flops, folder / 'nope.py']),
        ('flops-cfg-options-mismatched', [flops, fx.config, '--cfg-options', 'a=(]']),
        ('ops-batch-0', [ops, '--batch', '0']),
        ('ops-repeats-0', [ops, '--repeats', '0']),
        ('ops-warmup-neg', [ops, '--warmup', '-1']),
        ('ops-threads-0', [ops, '--threads', '0']),
        ('ops-impls-nope', [ops, '--impls', 'nope']),
        ('ops-device-cuda', [ops, '--device', 'cuda']),
        ('ops-device-tpu', [ops, '--device', 'tpu']),
        ('ops-json-missing-dir', [ops, '--json', '/nonexistent/dir/x.json']),
        ('model-json-missing-dir', [model, '--json', '/nonexistent/dir/x.json']),
        ('model-device-cuda', [model, '--device', 'cuda']),
        ('model-batch-0', [model, '--device', 'cpu', '--batch', '0']),
        ('model-size-8', [model, '--device', 'cpu', '--size', '8']),
        ('print-missing', [cfg, folder / 'nope.py']),
        ('print-broken', [cfg, broken]),
        ('print-cfg-options-unclosed', [cfg, fx.config, '--cfg-options', 'a=[1,2']),
        ('print-cfg-options-noequals', [cfg, fx.config, '--cfg-options', 'noequals']),
    ]
    cases = [Case(name, 'analysis', tool(*args)) for name, args in specs]
    cases.append(Case('flops-baseline-32x48', 'analysis', tool(flops, fx.config, '--shape',
                                                               '32', '48'),
                      expected='correct', check=output_has('flops')))
    cases.append(Case('print-baseline', 'analysis', tool(cfg, fx.config), expected='correct',
                      check=output_has('VOLO', 'crop_size')))
    return cases


def all_cases(fx: Fixtures) -> list[Case]:
    return [*hostile_cases(fx), *trust_cases(fx), *broken_checkpoint_cases(fx),
            *converter_cases(fx), *backbone_cases(), *config_cases(fx), *test_tool_cases(fx),
            *inference_cases(fx), *analysis_cases(fx)]


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------
def cell(text: str, limit: int = 180) -> str:
    text = ' '.join(text.split())
    text = text if len(text) <= limit else text[:limit - 1] + '…'
    return text.replace('|', '\\|')


def table(results: list[Result]) -> list[str]:
    lines = ['| case | expected | outcome | first line of the error (or note) |',
             '|---|---|---|---|']
    for result in results:
        flag = '' if result.matches else ' **≠**'
        note = f' [{result.case.note}]' if result.case.note else ''
        lines.append(f'| {result.case.name} | {result.case.expected} | {result.outcome}{flag} '
                     f'| {cell(result.detail + note)} |')
    return lines


def totals(results: list[Result]) -> list[str]:
    counts = Counter(result.outcome for result in results)
    lines = ['| outcome | cases |', '|---|---|']
    lines += [f'| {name} | {counts[name]} |' for name in OUTCOMES if counts[name]]
    mismatched = sum(not result.matches for result in results)
    lines.append(f'| **total** | {len(results)} ({mismatched} not as expected) |')
    return lines


def findings(results: list[Result]) -> list[str]:
    lines = []
    for result in results:
        if result.outcome not in BAD_OUTCOMES and result.matches:
            continue
        head = [line for line in (result.run.stderr + result.run.stdout).splitlines()
                if line.strip()]
        excerpt = head[:6]
        if result.outcome == 'traceback':
            excerpt = traceback_excerpt(result.run.output)
        lines += [f'### {result.case.name} ({result.outcome}; expected {result.case.expected})',
                  '', f'{result.detail}', '', '```', display_command(result.case),
                  f'# exit {result.run.rc}', *excerpt, '```', '']
    return lines


def traceback_excerpt(output: str, size: int = 8) -> list[str]:
    lines = [line for line in output.splitlines() if line.strip()]
    start = max(i for i, line in enumerate(lines) if 'Traceback' in line)
    block = lines[start:]
    return block[:2] + ['  ...'] + block[-(size - 2):] if len(block) > size else block


def write_report(results: list[Result], out: Path) -> str:
    text = '\n'.join([
        '# mmvolo hostile inputs', '',
        f'{len(results)} cases; **≠** marks an outcome other than expected. Logs: '
        f'{ROOT / "logs"}/<case>.log', '', *table(results), '', '## Totals', '',
        *totals(results), '', '## Findings (traceback, silent-wrong, data-loss, code-exec, '
        'and any outcome not as expected)', '', *findings(results)])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + '\n')
    return text


def main() -> None:
    global ROOT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--scratch', type=Path, default=ROOT,
                        help='folder for fixtures, cases and logs (default: %(default)s)')
    parser.add_argument('--out', type=Path, help='the report (default: SCRATCH/report.md)')
    parser.add_argument('--only', help='run the cases whose name contains this')
    parser.add_argument('--fresh', action='store_true', help='rebuild the fixtures')
    args = parser.parse_args()
    ROOT = args.scratch.resolve()
    args.out = args.out or ROOT / 'report.md'
    os.environ['OMP_NUM_THREADS'] = '1'
    ROOT.mkdir(parents=True, exist_ok=True)
    fixtures = prepare(args.fresh)
    cases = [case for case in all_cases(fixtures) if not args.only or args.only in case.name]
    results = []
    for index, case in enumerate(cases, 1):
        result = execute(case)
        results.append(result)
        print(f'[{index}/{len(cases)}] {case.name}: {result.outcome} '
              f'({result.run.seconds:.0f}s) {cell(result.detail, 120)}', file=sys.stderr,
              flush=True)
    print(write_report(results, args.out))
    print(f'\nreport: {args.out}')


if __name__ == '__main__':
    main()
