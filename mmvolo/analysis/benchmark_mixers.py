"""Benchmark of the local token mixers against OutlookAttention at VOLO-D1 stage-1 shape.

Two sections, each a table (markdown, to stdout) and records (``--json``):

* ``module``: every token mixer as VOLO-D1 stage 1 would use it - C=192, 6 heads, token grid
  = input / 8 (512x512 -> 64x64, 1024x2048 -> 128x256), batch ``--batch``:
  ``OutlookAttention`` (K=3, P=1, stride 2, as in VOLO; its 'auto' impl), ``Involution``
  (K=3, 12 groups, r=4), ``LocalSelfAttention`` (K=7, 6 heads), ``DWConvMixer`` (K=3), all
  with their defaults. Columns: parameters, multiply-adds, fwd and fwd+bwd median time, peak
  memory, and the ratios to OutlookAttention.
* ``op``: each sliding-window op (:func:`mmvolo.ops.involution`, ``local_attention``,
  ``depthwise_conv``) with ``impl='fast'`` vs ``impl='reference'`` on the same inputs at
  the module's shape and batch ``--op-batch`` (default 8): time and peak memory, ratio
  fast / reference. The targets "the fast path of LocalSelfAttention and Involution is no
  slower than its reference on CPU and uses <= 0.7x its peak memory at D1 stage-1 shape,
  batch 8" read off its ``x ref`` columns.

FLOPs are an **analytic** count of multiply-adds (one per multiply-add, as mmengine counts
them; :func:`analytic_macs`), with every window counted whole (border truncation ignored).
mmengine's ``FlopAnalyzer`` is not used for the table: it counts linear layers, convolutions
and matmuls, but not element-wise products (the core of involution and of the unfold
formulas), and the fast paths' ``autograd.Function`` s are opaque to its tracer. The header
prints its count as a fraction of the analytic one on a small input (reference impls;
DWConvMixer's conv2d), where it is exact for OutlookAttention and DWConvMixer and short for
the other two.

Timing and peak memory reuse ``benchmark_ops.py``'s functions (imported, not copied):
``time_round_robin`` (``--repeats`` timed runs after ``--warmup``, the cases interleaved
round-robin within each repeat so background load hits them alike; medians reported) and
``peak_mib`` (bytes allocated above the level before one fwd+bwd step: CUDA
``max_memory_allocated``; CPU: replayed allocator events of a ``torch.profiler`` run). The
fwd+bwd step of a module also allocates the parameter gradients (set to None before each
step, as ``zero_grad()`` does); upstream gradients and inputs are allocated beforehand.

Example: ``python tools/analysis/benchmark_mixers.py --device cpu --repeats 3 --json m.json``

Bad arguments (``--batch``/``--repeats`` below 1, a ``--sizes`` entry that is not HxW with
multiples of 8, ``--device cuda`` without CUDA, ``--json`` into a missing folder) print one
line ``error: ...`` and exit with status 2 before anything runs.
"""
from __future__ import annotations

import argparse
import re
from typing import Callable

import torch
from torch import nn

from mmvolo.cli import UsageError
from mmvolo.cli.arguments import ToolArgumentParser, check_output_folder, write_json_report
from mmvolo.models import DWConvMixer, Involution, LocalSelfAttention, OutlookAttention
from mmvolo.ops import depthwise_conv, involution, local_attention

from . import benchmark_ops as _ops_bench

time_round_robin = _ops_bench.time_round_robin
peak_mib = _ops_bench.peak_mib
check_device, check_counts = _ops_bench.check_device, _ops_bench.check_counts
_fwd, _fwdbwd = _ops_bench._fwd, _ops_bench._fwdbwd

CHANNELS, HEADS, PATCH = 192, 6, 8  # VOLO-D1 stage 1
SIZES = ['512x512', '1024x2048']
MIXERS: dict[str, Callable[[], nn.Module]] = {
    'OutlookAttention': lambda: OutlookAttention(CHANNELS, HEADS, 3, 1, stride=2),
    'Involution': lambda: Involution(CHANNELS),
    'LocalSelfAttention': lambda: LocalSelfAttention(CHANNELS, HEADS),
    'DWConvMixer': lambda: DWConvMixer(CHANNELS),
}
BASELINE = 'OutlookAttention'
OPS = ('involution', 'local_attention', 'depthwise_conv')
OP_IMPLS = ('reference', 'fast')


class Case:
    """One benchmarked computation, callable as ``benchmark_ops`` expects an op:
    ``case(a, b, heads)`` runs ``fn()`` (the arguments are ignored), after dropping the
    gradients of ``leaves[2:]`` (``_fwdbwd`` drops those of the first two, its ``v`` and
    ``logits``). ``inputs`` is the ``(v, logits, heads, grad_out)`` tuple its steps take."""

    def __init__(self, fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor],
                 grad: torch.Tensor) -> None:
        self.fn, self.leaves = fn, leaves
        self.inputs = (leaves[0], leaves[min(1, len(leaves) - 1)], HEADS, grad)

    def __call__(self, *_: object) -> torch.Tensor:
        for leaf in self.leaves[2:]:
            leaf.grad = None
        return self.fn()

    def clear_grads(self) -> None:
        for leaf in self.leaves:
            leaf.grad = None


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W) of the input image; H and W positive multiples of the patch size 8."""
    match = re.fullmatch(r'(\d+)x(\d+)', text)
    if not match or int(match[1]) % PATCH or int(match[2]) % PATCH or '0' in (match[1][0],
                                                                             match[2][0]):
        raise UsageError(f"--sizes {text}: expected HxW with H, W positive multiples of "
                         f"{PATCH}, e.g. 512x512")
    return int(match[1]), int(match[2])


def analytic_macs(name: str, module: nn.Module, batch: int, height: int, width: int) -> int:
    """Multiply-adds of one forward of mixer ``name`` on (batch, height, width, C) tokens.

    Linear layers count in*out per token (biases not counted); window terms count K*K per
    token and channel (whole windows); softmax, GELU, pooling and additions are not counted.
    """
    tokens = batch * height * width
    c = module.embed_dims
    kk = module.kernel_size ** 2
    if name == 'OutlookAttention':
        grid = batch * -(-height // module.stride) * -(-width // module.stride)
        return (tokens * c * c  # v
                + grid * c * module.attn.out_features  # attention logits
                + grid * c * kk * kk  # A @ V: heads * K^2 * K^2 * d per grid cell
                + tokens * c * c)  # proj
    if name == 'Involution':
        hidden = module.reduce.out_features
        return tokens * (c * hidden + hidden * module.span.out_features + c * kk + c * c)
    if name == 'LocalSelfAttention':
        # qkv, q.k and attn.v over the window, q.r (row + column halves: C*K), proj
        return tokens * (3 * c * c + 2 * c * kk + c * module.kernel_size + c * c)
    if name == 'DWConvMixer':
        return tokens * (c * kk + c * c)
    raise KeyError(name)


def mmengine_macs(module: nn.Module, tokens: torch.Tensor) -> int | None:
    """What mmengine's FlopAnalyzer counts for ``module(tokens)`` (None if it fails)."""
    try:
        from mmengine.analysis import FlopAnalyzer
    except ImportError:
        return None
    analyzer = FlopAnalyzer(module, (tokens,))
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    try:
        with torch.no_grad():
            return int(analyzer.total())
    except Exception:  # noqa: BLE001 - a tracing failure just means no cross-check
        return None


def flop_cross_check() -> str:
    """One line: mmengine's count / the analytic count per mixer on 16x16 tokens, with the
    impls whose multiply-adds it can see best (reference; DWConvMixer: F.conv2d)."""
    parts = []
    for name, make in MIXERS.items():
        module = make().eval()
        module.impl = 'fast' if name == 'DWConvMixer' else 'reference'  # conv2d is seen
        counted = mmengine_macs(module, torch.randn(1, 16, 16, CHANNELS))
        want = analytic_macs(name, module, 1, 16, 16)
        parts.append(f'{name} {"n/a" if counted is None else f"{counted / want:.0%}"}')
    return ('mmengine FlopAnalyzer / analytic MACs (1x16x16 tokens; reference impls, '
            'DWConvMixer conv2d): '
            + ', '.join(parts))


def _randn(*shape: int, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(device)


def module_cases(batch: int, height: int, width: int,
                 device: torch.device) -> dict[str, tuple[Case, nn.Module]]:
    gen = torch.Generator().manual_seed(0)
    x = _randn(batch, height, width, CHANNELS, device=device, gen=gen).requires_grad_()
    grad = _randn(batch, height, width, CHANNELS, device=device, gen=gen)
    cases = {}
    for name, make in MIXERS.items():
        module = make().to(device)
        cases[name] = (Case(lambda m=module: m(x), [x, x, *module.parameters()], grad),
                       module)
    return cases


def op_cases(name: str, batch: int, height: int, width: int,
             device: torch.device) -> dict[str, Case]:
    """impl -> Case for op ``name`` at D1 stage-1 shape (the modules' default settings)."""
    gen = torch.Generator().manual_seed(0)
    tokens = (batch, height, width, CHANNELS)

    def leaf(*shape: int) -> torch.Tensor:
        return _randn(*shape, device=device, gen=gen).requires_grad_()

    if name == 'involution':
        groups, size = CHANNELS // 16, 3
        tensors = [leaf(*tokens), leaf(batch, height, width, groups * size * size)]

        def call(impl: str) -> torch.Tensor:
            return involution(*tensors, size, groups, impl=impl)
    elif name == 'local_attention':
        size, half = 7, CHANNELS // HEADS // 2
        tensors = [leaf(*tokens), leaf(*tokens), leaf(*tokens), leaf(size, half),
                   leaf(size, half)]

        def call(impl: str) -> torch.Tensor:
            return local_attention(*tensors, HEADS, size, impl=impl)
    else:
        tensors = [leaf(*tokens), leaf(CHANNELS, 1, 3, 3), leaf(CHANNELS)]

        def call(impl: str) -> torch.Tensor:
            return depthwise_conv(*tensors, impl=impl)
    grad = _randn(*tokens, device=device, gen=gen)
    return {impl: Case(lambda impl=impl: call(impl), tensors, grad) for impl in OP_IMPLS}


def measure(cases: dict[str, Case], args: argparse.Namespace,
            device: torch.device) -> dict[str, dict]:
    """name -> fwd_ms, fwdbwd_ms (medians, interleaved) and peak_mib of each case."""
    fwd = time_round_robin(cases, lambda case: _fwd(case, *case.inputs), (), args.warmup,
                           args.repeats, device)
    fwdbwd = time_round_robin(cases, lambda case: _fwdbwd(case, *case.inputs), (),
                              args.warmup, args.repeats, device)
    results = {}
    for name, case in cases.items():
        case.clear_grads()
        results[name] = dict(fwd_ms=round(fwd[name], 3), fwdbwd_ms=round(fwdbwd[name], 3),
                             peak_mib=round(peak_mib(case, case.inputs, device), 1))
        case.clear_grads()
    return results


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    common = dict(device=device.type, dtype='fp32', repeats=args.repeats,
                  threads=torch.get_num_threads(), channels=CHANNELS, heads=HEADS)
    records = []
    if 'module' in args.sections:
        for size in args.sizes:
            img_h, img_w = parse_size(size)
            height, width = img_h // PATCH, img_w // PATCH
            cases = module_cases(args.batch, height, width, device)
            results = measure({name: case for name, (case, _) in cases.items()}, args, device)
            for name, (_, module) in cases.items():
                records.append(dict(
                    section='module', name=name, impl='auto', input_size=size,
                    batch=args.batch, height=height, width=width,
                    params=sum(p.numel() for p in module.parameters()),
                    macs=analytic_macs(name, module, args.batch, height, width),
                    **results[name], **common))
            del cases
    if 'op' in args.sections:
        for size in args.op_sizes:
            img_h, img_w = parse_size(size)
            height, width = img_h // PATCH, img_w // PATCH
            for op in OPS:
                results = measure(op_cases(op, args.op_batch, height, width, device), args,
                                  device)
                for impl in OP_IMPLS:
                    records.append(dict(section='op', name=op, impl=impl, input_size=size,
                                        batch=args.op_batch, height=height, width=width,
                                        **results[impl], **common))
    return records


def _ratio(value: float, base: float | None) -> str:
    return f'{value / base:.2f}' if base else '-'


def _tokens(r: dict) -> str:
    """The ``input | tokens`` cells of a record's row."""
    return f"{r['input_size']} | {r['batch']}x{r['height']}x{r['width']}x{r['channels']}"


def _timings(r: dict, base: dict) -> str:
    """The fwd, fwd+bwd and peak cells of a record's row, each with its ratio to ``base``."""
    return ' | '.join(f"{r[key]:{spec}} | {_ratio(r[key], base.get(key))}"
                      for key, spec in (('fwd_ms', '.1f'), ('fwdbwd_ms', '.1f'),
                                        ('peak_mib', '.0f')))


def format_tables(records: list[dict]) -> str:
    """Markdown tables: modules (ratios to OutlookAttention), ops (ratios fast / reference)."""
    lines = []
    modules = [r for r in records if r['section'] == 'module']
    if modules:
        base = {r['input_size']: r for r in modules if r['name'] == BASELINE}
        lines += ['| input | tokens | mixer | params | GMACs | fwd ms | x OA | fwd+bwd ms | '
                  'x OA | peak MiB (fwd+bwd) | x OA |', '|' + '---|' * 11]
        for r in modules:
            b = base.get(r['input_size'], {})
            lines.append(f"| {_tokens(r)} | {r['name']} | {r['params'] / 1e3:.1f}k | "
                         f"{r['macs'] / 1e9:.2f} | {_timings(r, b)} |")
    ops = [r for r in records if r['section'] == 'op']
    if ops:
        if lines:
            lines.append('')
        ref = {(r['input_size'], r['name']): r for r in ops if r['impl'] == 'reference'}
        lines += ['| input | tokens | op | impl | fwd ms | x ref | fwd+bwd ms | x ref | '
                  'peak MiB (fwd+bwd) | x ref |', '|' + '---|' * 10]
        for r in ops:
            b = ref.get((r['input_size'], r['name']), {})
            lines.append(f"| {_tokens(r)} | {r['name']} | {r['impl']} | {_timings(r, b)} |")
    return '\n'.join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments, defaults filled in and checked (UsageError if bad)."""
    cuda = torch.cuda.is_available()
    parser = ToolArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda' if cuda else 'cpu')
    parser.add_argument('--batch', type=int, default=2, help='module section (default 2)')
    parser.add_argument('--op-batch', type=int, default=8, help='op section (default 8)')
    parser.add_argument('--sizes', nargs='+', default=list(SIZES),
                        help='input image sizes HxW of the module section (tokens: /8); '
                             f'default: {" ".join(SIZES)}')
    parser.add_argument('--op-sizes', nargs='+', default=[SIZES[0]],
                        help=f'input image sizes of the op section; default: {SIZES[0]}')
    parser.add_argument('--sections', nargs='+', default=['module', 'op'],
                        choices=['module', 'op'])
    parser.add_argument('--repeats', type=int, default=None,
                        help='timed runs per case; default: 20 on CUDA, 3 on CPU')
    parser.add_argument('--warmup', type=int, default=None, help='default: 3 CUDA, 2 CPU')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads for CPU runs (default: torch default)')
    parser.add_argument('--json', default=None, help='write the records to this path')
    args = parser.parse_args(argv)
    check_device(args.device)
    on_cuda = args.device.startswith('cuda')
    args.repeats = (20 if on_cuda else 3) if args.repeats is None else args.repeats
    args.warmup = (3 if on_cuda else 2) if args.warmup is None else args.warmup
    check_counts(args)
    if args.op_batch < 1:
        raise UsageError(f'--op-batch must be at least 1, got {args.op_batch}')
    for size in [*args.sizes, *args.op_sizes]:
        parse_size(size)
    check_output_folder('--json', args.json)
    return args


def main(argv: list[str] | None = None) -> None:
    """Entry point (bad arguments raise UsageError)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'device={args.device} dtype=fp32 batch={args.batch} op_batch={args.op_batch} '
          f'repeats={args.repeats} warmup={args.warmup} torch={torch.__version__} '
          f'threads={torch.get_num_threads()}')
    print('FLOPs: analytic multiply-adds (GMACs, whole batch); ' + flop_cross_check())
    records = run(args)
    print(format_tables(records))
    write_json_report(records, args.json)

