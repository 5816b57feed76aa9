"""Benchmark of :func:`mmvolo.ops.local_aggregate` against each family member's dedicated op.

At VOLO-D1 stage-1 shape (batch 2, 64x64 tokens, C=192; ``--small``: batch 1, 32x32, C=96;
``--dry-run``: batch 1, 8x8, C=24, one repeat, for tests), fp32 on CPU, each configuration
written as one ``local_aggregate`` call (``impl='fast'``) and run against the op it replaces,
on the same inputs:

* ``dwconv``: K=3 depthwise conv, static weights (C, 9) vs ``mmvolo.ops.depthwise_conv``;
* ``involution``: K=3, 12 groups (C/16), per-pixel kernels vs ``mmvolo.ops.involution``;
* ``sasa``: K=7, 6 heads, logits ``local_similarity(q, k) + q . r`` (relative embedding),
  then ``local_aggregate(normalize='softmax')`` vs ``mmvolo.ops.local_attention``;
* ``outlook``: K=3, stride 2, 6 heads, ``fold=True, normalize='softmax'`` vs
  ``mmvolo.ops.outlook_attention`` ('auto');
* ``deform``: K=3, 12 offset groups, offsets ~ 2*N(0, 1), DCNv2 mask, via
  :func:`mmvolo.ops.deform_aggregate` vs ``torchvision.ops.deform_conv2d(x, offset,
  ones(C, 1, 3, 3), groups=C, mask=mask)`` (the same work).

Columns: median milliseconds of fwd and of fwd+bwd over ``--repeats`` runs after
``--warmup`` (the two ops of a row interleaved per repeat), peak MiB allocated above the
starting level during one fwd+bwd (CPU: the allocator events of a ``torch.profiler`` run,
replayed), the max |difference| of the two outputs, and the ratios local_aggregate /
dedicated (below 1: local_aggregate is faster / lighter).

Example: ``python tools/analysis/benchmark_local_aggregate.py --repeats 5``
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Callable

import torch

from mmvolo.ops import (
    deform_aggregate,
    depthwise_conv,
    involution,
    local_aggregate,
    local_attention,
    local_similarity,
    outlook_attention,
)

CONFIGS = ('dwconv', 'involution', 'sasa', 'outlook', 'deform')
SHAPES = {'d1': (2, 64, 64, 192), 'small': (1, 32, 32, 96), 'dry-run': (1, 8, 8, 24)}


def _randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * scale).requires_grad_()


def sasa_logits(q: torch.Tensor, k: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor,
                heads: int, kernel_size: int) -> torch.Tensor:
    """local_attention's logits from local_similarity plus the relative term q . r."""
    logits = local_similarity(q, k, kernel_size, scale=1.0, groups=heads)
    qh = q.unflatten(-1, (heads, -1))
    half = rel_h.shape[1]
    bias_h = qh[..., :half] @ rel_h.t()  # (B, H, W, heads, K): row offset a
    bias_w = qh[..., half:] @ rel_w.t()  # column offset b
    return logits + (bias_h[..., :, None] + bias_w[..., None, :]).flatten(-2)


def make_case(name: str, batch: int, height: int, width: int, channels: int) -> dict:
    """Inputs and the two callables (unified, dedicated) of one configuration."""
    gen = torch.Generator().manual_seed(0)
    x = _randn(gen, batch, height, width, channels)
    if name == 'dwconv':
        w = _randn(gen, channels, 1, 3, 3)
        ins = (x, w)
        uni = lambda x, w: local_aggregate(x, w.view(channels, 9), 3, padding=1,  # noqa: E731
                                           groups=channels)
        ded = lambda x, w: depthwise_conv(x, w)  # noqa: E731
    elif name == 'involution':
        groups = max(1, channels // 16)
        ker = _randn(gen, batch, height, width, groups * 9)
        ins = (x, ker)
        uni = lambda x, k: local_aggregate(x, k.unflatten(-1, (groups, 9)), 3,  # noqa: E731
                                           padding=1, groups=groups)
        ded = lambda x, k: involution(x, k, 3, groups)  # noqa: E731
    elif name == 'sasa':
        heads, size = 6, 7
        half = channels // heads // 2
        q, k = _randn(gen, *x.shape, scale=channels ** -0.5 * 2), _randn(gen, *x.shape)
        rel_h, rel_w = _randn(gen, size, half), _randn(gen, size, half)
        ins = (q, k, x, rel_h, rel_w)

        def uni(q, k, v, rel_h, rel_w):
            logits = sasa_logits(q, k, rel_h, rel_w, heads, size)
            return local_aggregate(v, logits, size, padding=size // 2, groups=heads,
                                   normalize='softmax')

        ded = lambda q, k, v, rh, rw: local_attention(q, k, v, rh, rw, heads, size)  # noqa
    elif name == 'outlook':
        heads = 6
        h, w = -(-height // 2), -(-width // 2)
        logits = _randn(gen, batch, h, w, heads * 81)
        ins = (x, logits)
        uni = lambda v, lg: local_aggregate(  # noqa: E731
            v, lg.view(batch, h, w, heads, 9, 9), 3, stride=2, padding=1, groups=heads,
            normalize='softmax', fold=True)
        ded = lambda v, lg: outlook_attention(v, lg, heads, 3, 1, 2)  # noqa: E731
    elif name == 'deform':
        from torchvision.ops import deform_conv2d
        groups = max(1, channels // 16)
        xn = _randn(gen, batch, channels, height, width)
        off = _randn(gen, batch, 2 * groups * 9, height, width, scale=2.0)
        mask = _randn(gen, batch, groups * 9, height, width)
        ones = torch.ones(channels, 1, 3, 3)
        ins = (xn, off, mask)
        uni = lambda x, o, m: deform_aggregate(x, o, m, 3, padding=1)  # noqa: E731
        ded = lambda x, o, m: deform_conv2d(x, o, ones, mask=m, padding=1)  # noqa: E731
    else:
        raise ValueError(f'unknown configuration {name!r}; choose from {", ".join(CONFIGS)}')
    return dict(inputs=ins, ops={'local_aggregate': uni, 'dedicated': ded})


def _grad_out(op: Callable, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = op(*inputs)
    return torch.randn(out.shape, generator=torch.Generator().manual_seed(1))


def _fwd(op: Callable, inputs: Sequence[torch.Tensor], _: torch.Tensor) -> None:
    with torch.no_grad():
        op(*inputs)


def _fwdbwd(op: Callable, inputs: Sequence[torch.Tensor], grad: torch.Tensor) -> None:
    for t in inputs:
        t.grad = None
    op(*inputs).backward(grad)


def peak_mib(op: Callable, inputs: Sequence[torch.Tensor], grad: torch.Tensor) -> float:
    """Peak MiB allocated above the starting level during one fwd+bwd (CPU profiler)."""
    from torch.profiler import ProfilerActivity, profile
    for t in inputs:
        t.grad = None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        op(*inputs).backward(grad)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == '[memory]'
                    and e.device_type() == torch.autograd.DeviceType.CPU)
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak / 2 ** 20


def run_case(name: str, shape: tuple, warmup: int, repeats: int) -> dict:
    case = make_case(name, *shape)
    inputs, ops = case['inputs'], case['ops']
    grad = _grad_out(ops['dedicated'], inputs)
    with torch.no_grad():
        diff = (ops['local_aggregate'](*inputs) - ops['dedicated'](*inputs)).abs().max().item()
    rec: dict[str, object] = dict(config=name, max_abs_diff=diff)
    for step_name, step in (('fwd_ms', _fwd), ('fwdbwd_ms', _fwdbwd)):
        times: dict[str, list[float]] = {op: [] for op in ops}
        for rep in range(warmup + repeats):
            for op_name, op in ops.items():
                start = time.perf_counter()
                step(op, inputs, grad)
                if rep >= warmup:
                    times[op_name].append((time.perf_counter() - start) * 1e3)
        for op_name in ops:
            rec[f'{op_name}_{step_name}'] = statistics.median(times[op_name])
    for op_name, op in ops.items():
        rec[f'{op_name}_peak_mib'] = peak_mib(op, inputs, grad)
    return rec


def format_table(records: list[dict]) -> str:
    head = ('| config | fwd ms (agg / ded) | fwd+bwd ms (agg / ded) | peak MiB (agg / ded) | '
            'x fwd | x fwd+bwd | x peak | max abs diff |')
    lines = [head, '|' + '---|' * 8]
    for r in records:
        cols = []
        ratios = []
        for key in ('fwd_ms', 'fwdbwd_ms', 'peak_mib'):
            agg, ded = r[f'local_aggregate_{key}'], r[f'dedicated_{key}']
            cols.append(f'{agg:.1f} / {ded:.1f}')
            ratios.append(f'{agg / ded:.2f}' if ded else 'n/a')
        lines.append(f"| {r['config']} | {' | '.join(cols)} | {' | '.join(ratios)} | "
                     f"{r['max_abs_diff']:.1e} |")
    return '\n'.join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument('--small', action='store_true', help='batch 1, 32x32, C=96')
    size.add_argument('--dry-run', action='store_true', help='tiny sizes, one repeat (tests)')
    parser.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads for the run (default: as set)')
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        parser.error('--repeats and --threads must be >= 1 and --warmup >= 0')
    if args.dry_run:
        args.repeats, args.warmup = 1, 0
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    shape = SHAPES['dry-run' if args.dry_run else 'small' if args.small else 'd1']
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f'local_aggregate vs dedicated ops: (B, H, W, C) = {shape}, fp32, CPU, '
          f'{torch.get_num_threads()} threads, median of {args.repeats} (warm-up '
          f'{args.warmup})')
    records = [run_case(name, shape, args.warmup, args.repeats) for name in args.configs]
    print(format_table(records))
    return records

