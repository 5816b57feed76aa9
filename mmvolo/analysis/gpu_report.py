"""One prepared GPU run: VOLO's outlook attention checked and measured, op to training.

    python tools/analysis/gpu_report.py --out DIR [--stages NAME ...] [--profile] [--dry-run]

Stages, always in this order, each under its own time budget (details: ``gpu_stages.py``):

============ ====== ==========================================================================
stage        budget what it does
============ ====== ==========================================================================
kernels       75 s  every available outlook-attention impl vs the reference (computed in fp64)
                    on the device: output, grad wrt v, grad wrt logits; fp32 / bf16 / fp16;
                    odd, non-square and tiny grids, stride 1 and 2; D1 and D4 stage-1 shapes;
                    then every local_aggregate impl per configuration of the family (outlook,
                    deformable outlook, involution, depthwise conv, neighborhood, DCNv3) vs
                    its reference in fp64, the offset gradient included
ops           75 s  D1 stage-1 op (8x64x64x192, 6 heads, K3 S2), fwd and fwd+bwd, fp32 and
                    bf16: every impl and timm side by side, median times (CUDA events), peak
                    memory, achieved fraction of HBM bandwidth; targets vs timm; then
                    local_aggregate (outlook and DCNv3 configurations) per impl, its 'triton'
                    against the memory-traffic floor and the dedicated outlook kernel
backbone      90 s  VOLO-D1 on the device equals its CPU result; torch._dynamo.explain graph
                    breaks; torch.compile (inductor) gives the same output
training      60 s  the toy config through tools/train.py (AMP bf16: loss falls, mIoU) and a
                    resume of it through tools/dist_train.sh CONFIG 1 (the NCCL launcher path)
throughput    90 s  VOLO-D1 vs Swin-T UperNet, 512x512, batch 8, bf16 AMP, train and inference
                    images/s (``benchmark_model.py``'s cases)
memory        90 s  peak training memory of VOLO-D1..D5 UperNet at 1024x1024, batch 1 and 2,
                    against 80 GB
profile       60 s  (only with ``--profile`` or ``--stages profile``) torch.profiler top-15
                    kernels of the VOLO-D1 UperNet training step
============ ====== ==========================================================================

Results are written as they come: ``DIR/report.md`` (for people) and ``DIR/report.json``
(every record, tracebacks) are rewritten atomically when the run starts, during a stage (at
most every few seconds) and after every stage, so a run that is cut short still leaves what
it measured. The report names the GPU, driver, CUDA, torch and Triton versions.

Budgets: a stage checks its budget between cases; once it has run out, the remaining cases
are skipped and the report says which (status ``partial``). A stage still running at 1.5x its
budget + 30 s is interrupted (SIGALRM; status ``failed``). Subprocesses get the stage's
remaining time as their timeout. An exception inside a stage is recorded (one line in the
report, the traceback in the JSON) and the next stage runs. A correctness check that fails
makes its stage ``failed``; a missed performance target is reported as "not met" only.

``--dry-run`` runs every stage on CPU at toy sizes (a few seconds each): it checks arguments,
imports, file layout and report writing before any GPU time is spent; CI runs it
(tests/test_gpu_report.py). On the offline GPU machine: ``bash tools/analysis/gpu_run.sh``.

Exit status: 0 when every stage is ok or partial; 1 when a stage failed or the run was
interrupted (one line on stderr); 2 for bad arguments, or no CUDA without ``--dry-run``.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from mmvolo.cli import UsageError
from mmvolo.cli.arguments import ToolArgumentParser
from mmvolo.fileio import write_text_atomic
from mmvolo.stack import installed, provider
from mmvolo.utils.signals import sigterm_raises

from . import gpu_stages

ROOT = Path(__file__).resolve().parents[2]
#: A stage still running this long after its budget is interrupted: max(30 s, budget / 2).
HARD_LIMIT_EXTRA_S = 30.0
#: Rewrite the report during a stage at most this often (each write fsyncs two files).
SAVE_EVERY_S = 2.0


@dataclass(frozen=True)
class StageSpec:
    """What a stage runs (``fn(run: StageRun)``), its budget and a one-line description."""

    fn: Callable[[StageRun], None]
    budget_s: float
    what: str


#: Every stage, in the order they run; ``profile`` runs only when asked for.
STAGES = {
    'kernels': StageSpec(gpu_stages.kernels, 75, 'every outlook-attention and '
                         'local_aggregate impl vs the fp64 reference: values and every '
                         'gradient, fp32/bf16/fp16'),
    'ops': StageSpec(gpu_stages.ops, 75, 'VOLO-D1 stage-1 op speed and memory, every impl '
                     'and timm side by side; local_aggregate vs the traffic floor'),
    'backbone': StageSpec(gpu_stages.backbone, 90, 'VOLO-D1 on the device vs CPU; graph '
                          'breaks; torch.compile (inductor) output'),
    'training': StageSpec(gpu_stages.training, 60, 'toy config through tools/train.py, then a '
                          'resume through tools/dist_train.sh CONFIG 1'),
    'throughput': StageSpec(gpu_stages.throughput, 90, 'VOLO-D1 vs Swin-T UperNet images/s, '
                            'train and inference'),
    'memory': StageSpec(gpu_stages.memory, 90, 'peak training memory of VOLO-D1..D5 UperNet at '
                        '1024x1024 against 80 GB'),
    'profile': StageSpec(gpu_stages.profile, 60, 'torch.profiler top-15 kernels of the VOLO-D1 '
                         'UperNet training step'),
}
OPTIONAL_STAGES = ('profile',)


StageTimeout = gpu_stages.StageTimeout


class Interrupted(BaseException):
    """SIGTERM (e.g. the outer ``timeout``) or Ctrl-C: stop, keep what was measured."""


@dataclass
class StageRun:
    """One stage's state and results; the stage function fills it in as it goes."""

    name: str
    spec: StageSpec
    device: torch.device
    dry: bool
    out: Path
    scratch: Path
    save: Callable[[bool], None] = field(repr=False)
    status: str = 'pending'
    seconds: float | None = None
    records: list[dict] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    targets: list[dict] = field(default_factory=list)
    values: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    blocks: list[dict] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
    _started: float | None = field(default=None, repr=False)

    @property
    def budget_s(self) -> float:
        return self.spec.budget_s

    def time_left(self) -> float:
        """Seconds of the budget left (negative once it has run out)."""
        started = time.monotonic() if self._started is None else self._started
        return self.budget_s - (time.monotonic() - started)

    def expired(self) -> bool:
        return self.time_left() <= 0

    def within_budget(self, items: Iterable, what: str = 'cases') -> Iterator:
        """Yield ``items`` while the budget lasts; then record how many were skipped."""
        items = list(items)
        for index, item in enumerate(items):
            if self.expired():
                self.skip(f'{len(items) - index} of {len(items)} {what} not run: the '
                          f'{self.budget_s:.0f} s budget ran out')
                return
            yield item

    def add(self, **record: Any) -> dict:
        """Append one result row (a table row in report.md) and save the report."""
        self.records.append(record)
        self.save(False)
        return record

    def check(self, name: str, passed: bool, detail: str = '') -> None:
        """Set correctness check ``name`` (a failed one fails the stage)."""
        self.checks = [c for c in self.checks if c['name'] != name]
        self.checks.append(dict(name=name, passed=bool(passed), detail=detail))

    def target(self, name: str, met: bool | None, detail: str = '') -> None:
        """Set performance target ``name`` (met / not met / None: not measurable here)."""
        self.targets = [t for t in self.targets if t['name'] != name]
        self.targets.append(dict(name=name, met=met, detail=detail))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def skip(self, text: str) -> None:
        """Record that part of the stage did not run because its budget ran out."""
        self.skipped.append(text)

    def block(self, title: str, text: str) -> None:
        """A preformatted block (e.g. a profiler table) for the report."""
        self.blocks.append(dict(title=title, text=text))

    def fail(self, error: BaseException) -> None:
        self.status = 'failed'
        self.error = gpu_stages.one_line(error)
        self.traceback = ''.join(traceback.format_exception(type(error), error,
                                                            error.__traceback__))

    def start(self) -> None:
        self.status, self._started = 'running', time.monotonic()

    def finish(self) -> None:
        """Resolve the status: failed (error or failed check), partial (skips) or ok."""
        self.seconds = round(time.monotonic() - self._started, 2)
        if self.status == 'running':
            if any(not check['passed'] for check in self.checks):
                self.status = 'failed'
            else:
                self.status = 'partial' if self.skipped else 'ok'

    def to_json(self) -> dict:
        keys = ('name', 'status', 'budget_s', 'seconds', 'records', 'checks', 'targets',
                'values', 'notes', 'skipped', 'blocks', 'error', 'traceback')
        return dict({key: getattr(self, key) for key in keys}, what=self.spec.what)


# ------------------------------------------------------------------------------ the report
class Report:
    """The run: environment, stages; :meth:`save` rewrites report.md and report.json."""

    def __init__(self, out: Path, names: list[str], device: torch.device, dry: bool,
                 argv: list[str], scratch: Path) -> None:
        self.out = out
        self.dry = dry
        self.meta = dict(tool='tools/analysis/gpu_report.py', dry_run=dry,
                         command=' '.join(['gpu_report.py', *argv]),
                         started=_now(), updated=None, environment=environment(device, dry))
        self.stages = [StageRun(name, STAGES[name], device, dry, out, scratch, self.save)
                       for name in names]
        self._last_save = 0.0

    def save(self, force: bool = True) -> None:
        """Rewrite both files (atomically); without ``force`` at most every SAVE_EVERY_S."""
        if not force and time.monotonic() - self._last_save < SAVE_EVERY_S:
            return
        self.meta['updated'] = _now()
        data = dict(self.meta, stages=[stage.to_json() for stage in self.stages])
        write_text_atomic(json.dumps(data, indent=1, default=str) + '\n',
                          self.out / 'report.json')
        write_text_atomic(render_markdown(self), self.out / 'report.md')
        self._last_save = time.monotonic()

    def failed(self) -> list[StageRun]:
        return [stage for stage in self.stages if stage.status == 'failed']


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')


def _version(distribution: str) -> str:
    return installed(distribution) or 'not installed'


def _stack_version(module: str) -> str:
    """'distribution version' of the installed package behind import name ``module``, on
    either stack (e.g. 'mmcv-lite 2.1.0', 'onedl-mmsegmentation 1.4.2')."""
    return str(provider(module) or 'not installed')


def _git_commit() -> str:
    try:
        result = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, timeout=10,
                                capture_output=True, text=True)
        return result.stdout.strip() or 'unknown'
    except Exception:  # noqa: BLE001 - no git, or not a checkout (e.g. an unpacked archive)
        return 'unknown'


def gpu_facts(device: torch.device) -> dict:
    """GPU name, memory, SMs, driver (nvidia-smi) and CUDA versions; each guarded."""
    facts: dict = {}
    with contextlib.suppress(Exception):
        props = torch.cuda.get_device_properties(device)
        facts.update(gpu=props.name, capability=f'sm_{props.major}{props.minor}',
                     sms=props.multi_processor_count,
                     memory_gib=round(props.total_memory / 2 ** 30, 1))
    with contextlib.suppress(Exception):
        result = subprocess.run(['nvidia-smi', '--query-gpu=driver_version',
                                 '--format=csv,noheader'], capture_output=True, text=True,
                                timeout=20)
        facts['driver'] = result.stdout.strip().splitlines()[0]
    with contextlib.suppress(Exception):
        version = torch._C._cuda_getDriverVersion()  # e.g. 13000 -> 13.0
        facts['driver_cuda'] = f'{version // 1000}.{version % 1000 // 10}'
    with contextlib.suppress(Exception):
        facts['cudnn'] = str(torch.backends.cudnn.version())
    return facts


def environment(device: torch.device, dry: bool) -> dict:
    """Versions and machine facts for the report header."""
    info = dict(device=str(device), gpu='none (CPU dry run)' if dry else 'unknown',
                cuda_runtime=torch.version.cuda or 'none', torch=torch.__version__,
                triton=_version('triton'), timm=_version('timm'), numpy=_version('numpy'),
                mmengine=_stack_version('mmengine'), mmcv=_stack_version('mmcv'),
                mmseg=_stack_version('mmseg'), python=platform.python_version(),
                cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                mmvolo_commit=_git_commit())
    if device.type == 'cuda':
        info.update(gpu_facts(device))
    return info


STATUS_TEXT = {'pending': 'not run', 'running': 'interrupted (was running)', 'ok': 'ok',
               'partial': 'partial (budget ran out)', 'failed': 'FAILED'}


def render_markdown(report: Report) -> str:
    """report.md: header with the machine and versions, a summary, then one section a stage."""
    env = report.meta['environment']
    lines = ['# mmvolo GPU report', '']
    if report.dry:
        lines += ['**CPU dry run**: every stage ran on CPU at toy sizes to check the code '
                  'paths; its numbers are not measurements.', '']
    gpu = env.get('gpu', 'unknown')
    if 'capability' in env:
        gpu += f" ({env['capability']}, {env.get('sms', '?')} SMs, {env.get('memory_gib')} GiB)"
    rows = [('GPU', gpu), ('driver', env.get('driver', 'n/a')),
            ('CUDA', f"{env['cuda_runtime']} (torch build)" + (
                f", driver supports {env['driver_cuda']}" if 'driver_cuda' in env else '')),
            ('torch', env['torch']), ('Triton', env['triton']), ('timm', env['timm']),
            ('mmengine / mmcv / mmseg', f"{env['mmengine']} / {env['mmcv']} / {env['mmseg']}"),
            ('Python / CPUs', f"{env['python']} / {env['cpus']}"),
            ('mmvolo commit', env['mmvolo_commit']), ('command', f"`{report.meta['command']}`"),
            ('started / written', f"{report.meta['started']} / {report.meta['updated']}")]
    lines += ['| | |', '|---|---|', *(f'| {key} | {value} |' for key, value in rows), '']
    lines += ['## Summary', '', '| stage | status | seconds | budget s | checks | targets |',
              '|---|---|---|---|---|---|']
    for stage in report.stages:
        passed = sum(c['passed'] for c in stage.checks)
        met = sum(t['met'] is True for t in stage.targets)
        lines.append(f'| {stage.name} | {STATUS_TEXT[stage.status]} | '
                     f"{_cell(stage.seconds)} | {stage.budget_s:.0f} | "
                     f'{passed}/{len(stage.checks)} passed | {met}/{len(stage.targets)} met |')
    for index, stage in enumerate(report.stages, 1):
        lines += ['', *render_stage(index, stage)]
    return '\n'.join(lines) + '\n'


def render_stage(index: int, stage: StageRun) -> list[str]:
    """One stage's section of report.md."""
    took = '' if stage.seconds is None else f', {stage.seconds:.1f} s of {stage.budget_s:.0f} s'
    lines = [f'## {index}. {stage.name}: {STATUS_TEXT[stage.status]}{took}', '',
             f'_{stage.spec.what}._', '']
    if stage.error:
        lines += [f'**Error**: `{stage.error}` (traceback in report.json)', '']
    lines += [f'- {note}' for note in stage.notes]
    lines += [f'- {key}: {_cell(value)}' for key, value in stage.values.items()]
    lines += [f'- skipped: {text}' for text in stage.skipped]
    if stage.checks:
        lines += ['', '**Checks**', '']
        lines += [f"- {'passed' if c['passed'] else '**FAILED**'}: {c['name']}"
                  + (f" ({c['detail']})" if c['detail'] else '') for c in stage.checks]
    if stage.targets:
        lines += ['', '**Targets**', '']
        met_text = {True: 'met', False: '**not met**', None: 'n/a'}
        lines += [f"- {met_text[t['met']]}: {t['name']}" + (f" ({t['detail']})" if t['detail']
                                                              else '') for t in stage.targets]
    if stage.records:
        lines += ['', *records_table(stage.records)]
    for block in stage.blocks:
        lines += ['', f"**{block['title']}**", '', '```', block['text'].rstrip(), '```']
    return lines


def records_table(records: list[dict]) -> list[str]:
    """A Markdown table with the union of the records' keys as columns."""
    columns = list(dict.fromkeys(key for record in records for key in record))
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(_cell(record.get(key)) for key in columns) + ' |'
              for record in records]
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return '-'
    if isinstance(value, bool):
        return 'yes' if value else 'no'
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and abs(value) < 1e-2:
            return f'{value:.2e}'
        return f'{value:.4g}' if abs(value) < 1e4 else f'{value:.0f}'
    if isinstance(value, (list, tuple)):
        return ', '.join(_cell(item) for item in value)
    return str(value).replace('|', '\\|').replace('\n', ' ')


# ------------------------------------------------------------------------------ running
def sigterm_interrupts() -> contextlib.AbstractContextManager:
    """Turn SIGTERM into :class:`Interrupted` for the block (main thread only)."""
    return sigterm_raises(Interrupted, 'terminated (SIGTERM, e.g. the outer timeout)')


def run_stage(stage: StageRun) -> None:
    """Run one stage under its budget; record an exception instead of raising it."""
    stage.start()
    stage.save(True)
    print(f'[gpu_report] {stage.name}: started (budget {stage.budget_s:.0f} s)', flush=True)
    torch.manual_seed(0)
    try:
        limit = stage.budget_s + max(HARD_LIMIT_EXTRA_S, stage.budget_s / 2)
        with gpu_stages.time_limit(limit, f'still running {limit:.0f} s after it started (hard '
                                   f'limit; budget {stage.budget_s:.0f} s): interrupted'):
            stage.spec.fn(stage)
    except (Interrupted, KeyboardInterrupt) as error:
        stage.fail(error)
        raise
    except (Exception, StageTimeout) as error:  # noqa: BLE001 - recorded; the next stage runs
        stage.fail(error)
    finally:
        stage.finish()
        gpu_stages.release_memory(stage.device)
        stage.save(True)
        print(f'[gpu_report] {stage.name}: {STATUS_TEXT[stage.status]} in {stage.seconds:.1f} s'
              + (f': {stage.error}' if stage.error else ''), flush=True)


def parse_args(argv: list[str] | None = None):
    """Command-line arguments, checked (UsageError: one line, exit 2)."""
    parser = ToolArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, metavar='DIR',
                        help='folder for report.md, report.json and logs (created)')
    parser.add_argument('--stages', nargs='+', metavar='STAGE',
                        help=f"stages to run, in the fixed order ({', '.join(STAGES)}); "
                        'default: all but profile')
    parser.add_argument('--profile', action='store_true', help='add the profile stage')
    parser.add_argument('--dry-run', action='store_true',
                        help='every stage on CPU at toy sizes (checks the run without a GPU)')
    args = parser.parse_args(argv)
    args.stages = select_stages(args.stages, args.profile)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f'--out {args.out} is a file; pass a folder (it is created if missing)')
    return args


def select_stages(names: list[str] | None, profile: bool) -> list[str]:
    """The stages to run in their fixed order; names may also be comma-separated."""
    if names is None:
        chosen = [name for name in STAGES if name not in OPTIONAL_STAGES]
    else:
        chosen = [part for name in names for part in name.split(',') if part]
        unknown = [name for name in chosen if name not in STAGES]
        if unknown or not chosen:
            raise UsageError(f"--stages: unknown stage {', '.join(unknown) or '(none given)'}; "
                             f"valid stages: {', '.join(STAGES)}")
    if profile:
        chosen.append('profile')
    return [name for name in STAGES if name in chosen]


def pick_device(dry: bool) -> torch.device:
    """CPU for a dry run; else the GPU (UsageError without one)."""
    if dry:
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise UsageError('no CUDA GPU here (torch.cuda.is_available() is False); run with '
                         '--dry-run to check every stage on CPU at toy sizes')
    return torch.device('cuda', torch.cuda.current_device())


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the stages; UsageError (exit 1) when one failed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = pick_device(args.dry_run)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix='gpu_report_'))
    report = Report(out, args.stages, device, args.dry_run, argv, scratch)
    threads = torch.get_num_threads()
    impls = {var: os.environ.get(var) for var in gpu_stages.IMPL_ENV_VARS}
    if args.dry_run:
        torch.set_num_threads(1)  # small shared CI machines: many threads only wait for each other
    print(f"[gpu_report] {'CPU dry run' if args.dry_run else report.meta['environment']['gpu']}"
          f": stages {', '.join(args.stages)}; report in {out}", flush=True)
    try:
        report.save()
        with sigterm_interrupts():
            for stage in report.stages:
                run_stage(stage)
    except (Interrupted, KeyboardInterrupt) as error:
        raise UsageError(f'{gpu_stages.one_line(error)}; the report in {out} has what was measured',
                         exit_code=1) from None
    finally:
        torch.set_num_threads(threads)
        for var, impl in impls.items():  # the kernels stage may have switched them
            os.environ.pop(var, None)
            if impl is not None:
                os.environ[var] = impl
        report.save()
        shutil.rmtree(scratch, ignore_errors=True)
    failed = report.failed()
    if failed:
        raise UsageError(f"{len(failed)} of {len(report.stages)} stages failed "
                         f"({', '.join(stage.name for stage in failed)}); see {out / 'report.md'}",
                         exit_code=1)
    print(f"[gpu_report] done: {out / 'report.md'}", flush=True)

