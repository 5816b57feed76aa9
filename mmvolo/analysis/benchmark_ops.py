"""Op-level benchmark of the outlook attention implementations at VOLO stage-1 shapes.

Every selected implementation runs side by side in the same process on the same inputs:

* the registered implementations of :func:`mmvolo.ops.outlook_attention`
  (:func:`mmvolo.ops.known_impls`: ``reference``, ``chunked``, ``triton``, ...), each only
  where it can run on the benchmark's tensors (e.g. ``triton`` only on CUDA): an impl that
  cannot would fall back to another one, which is not worth a row;
* ``timm`` (when timm is installed): ``timm.models.volo.OutlookAttention.forward`` itself,
  with its ``v`` and ``proj`` linears replaced by identities, its ``attn`` linear replaced by
  a module returning the given logits and ``scale`` set to 1, so it computes the same op (its
  ``AvgPool2d`` of the input still runs; the pooled result is discarded).

Shapes: stage-1 token grid = input / 8; D1: C=192, 6 heads; D2/D3: C=256, 8 heads;
D4/D5: C=384, 12 heads; K=3, P=1, S=2. Variants with identical shapes are measured once.

Timing: ``repeats`` timed runs after ``warmup`` runs; the implementations are interleaved
round-robin within each repeat so background load hits them alike; medians are reported.
``fwd`` runs under ``torch.no_grad``; ``fwdbwd`` is forward + backward into v and logits.

Peak memory (``peak_mib``, of the fwd+bwd step): bytes allocated above what was allocated
before the step (inputs and upstream gradient excluded). CUDA: ``torch.cuda.max_memory_allocated``.
CPU: one extra run under ``torch.profiler`` with ``profile_memory=True``; the allocation and
free events of the CPU allocator are replayed in time order and the maximum running total is
taken (this sees every tensor allocation torch makes; it does not see non-torch memory).

Load (``--load N``, default 0): N busy processes run for the whole benchmark, from before
the first warm-up to after the last measurement, to measure the ops while other work
saturates the cores (``--load 2`` on a 2-core machine: every core has a competing runnable
process). Each is a pure-Python spin loop (``python -I -S -c 'while ...: pass'``), chosen over
a torch matmul loop because it competes for CPU time only: no memory traffic or cache
footprint that would mix a second effect into the numbers, no thread pool of its own, no
memory, and it starts in ~20 ms without importing torch. It exits by itself within ~0.1 s
once its parent is gone (it polls ``os.getppid()``), so even a killed benchmark leaves
nothing spinning; normally it is terminated and joined in a ``finally`` (errors, Ctrl-C).
The header line says ``load=N`` and which impl ``auto`` (a model's default) picks here; the
records carry ``load``.

Example: ``python tools/analysis/benchmark_ops.py --device cpu --json bench.json``

Bad arguments (``--batch``/``--repeats`` below 1, ``--load`` below 0, an unknown ``--impls``
name, ``--device cuda`` without CUDA, ``--json`` into a missing folder) print one line
``error: ...`` and exit with status 2 before anything runs (no busy process started).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Callable

import torch
from torch import nn

from mmvolo.cli import UsageError
from mmvolo.cli.arguments import ToolArgumentParser, check_output_folder, write_json_report
from mmvolo.ops import known_impls, outlook_attention, unsupported_reason
from mmvolo.ops.outlook import select_impl

VARIANTS = {'d1': (192, 6), 'd2': (256, 8), 'd3': (256, 8), 'd4': (384, 12), 'd5': (384, 12)}
SIZES = {'512x512': (512, 512), '1024x2048': (1024, 2048)}
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
KERNEL, PADDING, STRIDE, PATCH = 3, 1, 2, 8
#: ``--impls`` names besides the registered implementations.
EXTRA_IMPLS = ('timm',)

OpFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]

#: One busy process of ``--load``: spins in pure Python until its parent is gone.
SPIN_CODE = ('import os\n'
             'parent = os.getppid()\n'
             'while os.getppid() == parent:\n'
             '    for _ in range(200000):\n'
             '        pass\n')


@contextlib.contextmanager
def busy_load(count: int) -> Iterator[list[subprocess.Popen]]:
    """Run ``count`` pure-Python spin processes for the duration of the block.

    They are terminated and joined when the block ends, however it ends (error, Ctrl-C);
    one that ignores SIGTERM for 5 s is killed.
    """
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(count):
            procs.append(subprocess.Popen([sys.executable, '-I', '-S', '-c', SPIN_CODE],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        yield procs
    finally:
        stop_processes(procs)


def stop_processes(procs: list[subprocess.Popen], timeout: float = 5.0) -> None:
    """Terminate every process, then join it (kill it when it outlives ``timeout``)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _GivenLogits(nn.Module):
    """Stands in for timm's ``attn`` linear: ignores its input, returns preset logits."""

    def __init__(self) -> None:
        super().__init__()
        self.logits: torch.Tensor | None = None

    def forward(self, _: torch.Tensor) -> torch.Tensor:
        return self.logits


def timm_op(channels: int, heads: int) -> OpFn | None:
    """timm's OutlookAttention.forward reduced to the op (see module docstring), or None."""
    try:
        from timm.models.volo import OutlookAttention
    except ImportError:
        return None
    module = OutlookAttention(channels, heads, KERNEL, PADDING, STRIDE)
    module.v, module.proj, module.attn = nn.Identity(), nn.Identity(), _GivenLogits()
    module.scale = 1.0

    def run(v: torch.Tensor, logits: torch.Tensor, num_heads: int) -> torch.Tensor:
        module.attn.logits = logits
        return module(v)

    return run


def impl_op(name: str) -> OpFn:
    def run(v: torch.Tensor, logits: torch.Tensor, num_heads: int) -> torch.Tensor:
        return outlook_attention(v, logits, num_heads, KERNEL, PADDING, STRIDE, impl=name)

    return run


def make_ops(impls: list[str], channels: int, heads: int, v: torch.Tensor,
             logits: torch.Tensor) -> dict[str, OpFn]:
    """name -> op for every requested implementation that can run on ``v`` and ``logits``."""
    ops = {}
    for name in impls:
        if name == 'timm':
            op = timm_op(channels, heads)
            if op is not None:
                ops[name] = op
        elif unsupported_reason(name, v, logits) is None:
            ops[name] = impl_op(name)
    return ops


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _fwd(op: OpFn, v, logits, heads, grad) -> None:
    with torch.no_grad():
        op(v, logits, heads)


def _fwdbwd(op: OpFn, v, logits, heads, grad) -> None:
    v.grad = logits.grad = None
    op(v, logits, heads).backward(grad)


def time_round_robin(ops: dict[str, OpFn], step: Callable, inputs: tuple, warmup: int,
                     repeats: int, device: torch.device) -> dict[str, float]:
    """Median milliseconds of ``step(op, *inputs)`` per op, ops interleaved per repeat:
    CUDA events around the step on CUDA, wall clock elsewhere."""
    times: dict[str, list] = {name: [] for name in ops}
    for rep in range(warmup + repeats):
        for name, op in ops.items():
            elapsed = _step_ms(step, op, inputs, device)
            if rep >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def _step_ms(step: Callable, op: OpFn, inputs: tuple, device: torch.device) -> float:
    """Milliseconds of one ``step(op, *inputs)``, the device's queue empty before and after."""
    if device.type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync(device)
        start.record()
        step(op, *inputs)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start_s = time.perf_counter()
    step(op, *inputs)
    return (time.perf_counter() - start_s) * 1e3


def peak_mib(op: OpFn, inputs: tuple, device: torch.device) -> float:
    """Peak MiB allocated above the starting level during one fwd+bwd step."""
    inputs[0].grad = inputs[1].grad = None  # freeing old grads inside would lower the peak
    if device.type == 'cuda':
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        _fwdbwd(op, *inputs)
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _fwdbwd(op, *inputs)
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == '[memory]' and e.device_type() == torch.autograd.DeviceType.CPU]
    current = peak = 0
    for _, nbytes in sorted(events):
        current += nbytes
        peak = max(peak, current)
    return peak / 2 ** 20


def make_inputs(batch: int, height: int, width: int, channels: int, heads: int,
                dtype: torch.dtype, device: torch.device) -> tuple:
    """(v, logits, heads, grad_out) at stage-1 shape; v and logits require grad."""
    h, w = math.ceil(height / STRIDE), math.ceil(width / STRIDE)
    gen = torch.Generator(device='cpu').manual_seed(0)
    v = torch.randn(batch, height, width, channels, generator=gen).to(device, dtype)
    logits = torch.randn(batch, h, w, heads * KERNEL ** 4, generator=gen).to(device, dtype)
    grad = torch.randn(batch, height, width, channels, generator=gen).to(device, dtype)
    return v.requires_grad_(), logits.requires_grad_(), heads, grad


def auto_choice(device: torch.device, dtype: torch.dtype) -> str:
    """The impl ``'auto'`` picks for this device and dtype (what a model runs by default)."""
    v, logits, _, _ = make_inputs(1, 2, 2, 8, 2, dtype, device)
    return select_impl(v, 'auto', logits)


def check_timm_equivalence(device: torch.device) -> float | None:
    """Max |timm - reference| on a small fp32 case (None without timm)."""
    op = timm_op(24, 3)
    if op is None:
        return None
    v, logits, heads, _ = make_inputs(2, 9, 13, 24, 3, torch.float32, device)
    with torch.no_grad():
        return (op(v, logits, heads) - impl_op('reference')(v, logits, heads)).abs().max().item()


def shape_groups(variants: list[str]) -> dict[tuple, list[str]]:
    """(channels, heads) -> variant names sharing that shape, in first-seen order."""
    groups: dict[tuple, list[str]] = {}
    for name in variants:
        groups.setdefault(VARIANTS[name], []).append(name)
    return groups


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    records = []
    for size in args.sizes:
        img_h, img_w = SIZES[size]
        for (channels, heads), names in shape_groups(args.variants).items():
            inputs = make_inputs(args.batch, img_h // PATCH, img_w // PATCH, channels, heads,
                                 dtype, device)
            ops = make_ops(args.impls, channels, heads, *inputs[:2])
            fwd = time_round_robin(ops, _fwd, inputs, args.warmup, args.repeats, device)
            fwdbwd = time_round_robin(ops, _fwdbwd, inputs, args.warmup, args.repeats, device)
            for name, op in ops.items():
                records.append(dict(
                    impl=name, device=device.type, dtype=args.dtype, batch=args.batch,
                    height=img_h // PATCH, width=img_w // PATCH, channels=channels, heads=heads,
                    fwd_ms=round(fwd[name], 3), fwdbwd_ms=round(fwdbwd[name], 3),
                    peak_mib=round(peak_mib(op, inputs, device), 1),
                    variants='/'.join(n.upper() for n in names), input_size=size,
                    repeats=args.repeats, threads=torch.get_num_threads(),
                    load=args.load))
            del inputs
    return records


def format_table(records: list[dict]) -> str:
    """Markdown table with ratios vs the reference of the same shape."""
    ref = {(r['input_size'], r['channels']): r for r in records if r['impl'] == 'reference'}
    lines = ['| input | variants | tokens | impl | fwd ms | x ref | fwd+bwd ms | x ref | '
             'peak MiB (fwd+bwd) | x ref |', '|' + '---|' * 10]
    for r in records:
        base = ref.get((r['input_size'], r['channels']))

        def ratio(key: str, rec: dict = r, base: dict | None = base) -> str:
            return f"{rec[key] / base[key]:.2f}" if base and base[key] else '-'

        lines.append(f"| {r['input_size']} | {r['variants']} | {r['batch']}x{r['height']}x"
                     f"{r['width']}x{r['channels']} | {r['impl']} | {r['fwd_ms']:.1f} | "
                     f"{ratio('fwd_ms')} | {r['fwdbwd_ms']:.1f} | {ratio('fwdbwd_ms')} | "
                     f"{r['peak_mib']:.0f} | {ratio('peak_mib')} |")
    return '\n'.join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments, defaults filled in and checked (UsageError if bad)."""
    cuda = torch.cuda.is_available()
    parser = ToolArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda' if cuda else 'cpu')
    parser.add_argument('--dtype', default='fp32', choices=sorted(DTYPES))
    parser.add_argument('--batch', type=int, default=None,
                        help='default: 8 on CUDA, 2 on CPU')
    parser.add_argument('--repeats', type=int, default=None,
                        help='timed runs per case; default: 20 on CUDA, 3 on CPU')
    parser.add_argument('--warmup', type=int, default=None, help='default: 3 CUDA, 2 CPU')
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS),
                        choices=list(VARIANTS))
    parser.add_argument('--sizes', nargs='+', default=list(SIZES), choices=list(SIZES))
    parser.add_argument('--impls', nargs='+', default=[
        'reference', *EXTRA_IMPLS, *(name for name in known_impls() if name != 'reference')])
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads for CPU runs (default: torch default)')
    parser.add_argument('--load', type=int, default=0,
                        help='busy processes (pure-Python spin loops) running during the '
                        'benchmark, e.g. one per core (default: 0)')
    parser.add_argument('--json', default=None, help='write the records to this path')
    args = parser.parse_args(argv)
    check_device(args.device)
    on_cuda = args.device.startswith('cuda')
    args.batch = _default(args.batch, 8 if on_cuda else 2)
    args.repeats = _default(args.repeats, 20 if on_cuda else 3)
    args.warmup = _default(args.warmup, 3 if on_cuda else 2)
    check_counts(args)
    check_impls(args.impls)
    check_output_folder('--json', args.json)
    if 'reference' not in args.impls:
        args.impls = ['reference', *args.impls]  # ratios need it
    return args


def _default(value: int | None, default: int) -> int:
    return default if value is None else value


def check_device(device: str) -> None:
    """Require a torch device this machine has."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device} is not a torch device; use 'cpu' or 'cuda'"
                         ) from None
    if kind == 'cuda' and not torch.cuda.is_available():
        raise UsageError(f'--device {device}: no CUDA GPU here; use --device cpu')
    if kind not in ('cpu', 'cuda'):
        raise UsageError(f"--device {device}: only 'cpu' and 'cuda' are benchmarked")


def check_counts(args: argparse.Namespace) -> None:
    """Require at least one image, one timed run and thread, and no negative warm-up or load."""
    for flag, value, low in (('--batch', args.batch, 1), ('--repeats', args.repeats, 1),
                             ('--warmup', args.warmup, 0), ('--threads', args.threads, 1),
                             ('--load', getattr(args, 'load', None), 0)):
        if value is not None and value < low:
            raise UsageError(f'{flag} must be at least {low}, got {value}')


def check_impls(impls: list[str]) -> None:
    """Require known implementation names (registered ones and timm)."""
    known = [*known_impls(), *EXTRA_IMPLS]
    unknown = [name for name in impls if name not in known]
    if unknown:
        raise UsageError(f'--impls: unknown implementation {", ".join(unknown)}; choose from '
                         f'{", ".join(dict.fromkeys(known))}')


def main(argv: list[str] | None = None) -> None:
    """Entry point (bad arguments raise UsageError)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with busy_load(args.load):
        diff = check_timm_equivalence(torch.device(args.device))
        print(f'device={args.device} dtype={args.dtype} batch={args.batch} '
              f'repeats={args.repeats} warmup={args.warmup} torch={torch.__version__} '
              f'threads={torch.get_num_threads()} load={args.load} '
              f'auto={auto_choice(torch.device(args.device), DTYPES[args.dtype])}')
        if diff is not None:
            print(f'timm vs reference max |diff| (fp32, small case): {diff:.2e}')
        records = run(args)
    print(format_table(records))
    write_json_report(records, args.json)

