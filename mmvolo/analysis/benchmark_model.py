"""Model-level benchmark: VOLO UperNet vs mmseg's Swin-T UperNet, same batch, same run.

Measures, per model and mode (``train``: forward + backward + AdamW step; ``infer``: forward
in eval mode under no_grad), the median step time over ``--repeats`` timed steps (after
``--warmup``), images/s, and peak memory. Each (model, mode) case runs in its own subprocess
so peaks do not leak between cases. Peak memory is ``torch.cuda.max_memory_allocated`` on GPU
and the growth of the process's peak RSS over the built model on CPU (``ru_maxrss``).

    python tools/analysis/benchmark_model.py --device cuda --batch 8 --size 512
    python tools/analysis/benchmark_model.py --device cpu --batch 1 --size 256 --repeats 3
    python tools/analysis/benchmark_model.py ... --json results.json
    python tools/analysis/benchmark_model.py --device cpu --batch 1 --modes infer --profile 12

``--profile N`` adds, per case, where one more step spends its time: the forward time of each
part of the model (the backbone's and the decode head's children, list children one by one;
forward hooks, so backward is not in it) and the ``N`` costliest operators by self time
(torch.profiler).

Bad arguments (``--device cuda`` without CUDA, counts below 1, ``--json`` into a missing
folder) print one line ``error: ...`` and exit with status 2 before any case runs; when a
case fails the table shows its error and the exit status is 1.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mmvolo.cli import UsageError, run_tool
from mmvolo.cli.arguments import ToolArgumentParser, check_output_folder, write_json_report

ROOT = Path(__file__).resolve().parents[2]
MODELS = {
    'volo-d1_upernet': str(ROOT / 'configs/volo/volo-d1_upernet_8xb2-160k_ade20k-512x512.py'),
    'swin-t_upernet': 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_'
                      'ade20k-512x512.py',
}


def resolve_config(config: str) -> str:
    """Path of a config file; ``mmseg::x.py`` points into mmseg's installed configs."""
    if not config.startswith('mmseg::'):
        return config
    import mmseg

    return str(Path(mmseg.__file__).parent / '.mim' / 'configs' / config[len('mmseg::'):])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ToolArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda', choices=['cuda', 'cpu'])
    parser.add_argument('--batch', type=int, default=8,
                        help='>= 2 for train mode (BatchNorm in the heads)')
    parser.add_argument('--size', type=int, default=512, help='square input size')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    parser.add_argument('--modes', nargs='+', default=['train', 'infer'],
                        choices=['train', 'infer'])
    parser.add_argument('--amp', action='store_true', help='bf16 autocast')
    parser.add_argument('--json', help='write the records to this file')
    parser.add_argument('--profile', type=int, default=0, metavar='N',
                        help='also print where a step spends its time: per-module forward '
                             'times and the N costliest operators')
    parser.add_argument('--case', help=argparse.SUPPRESS)  # internal: run one case, print JSON
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse arguments no case could run with, before running any (UsageError)."""
    for flag, value, low in (('--batch', args.batch, 1), ('--size', args.size, 32),
                             ('--repeats', args.repeats, 1), ('--warmup', args.warmup, 0),
                             ('--profile', args.profile, 0)):
        if value < low:
            raise UsageError(f'{flag} must be at least {low}, got {value}')
    check_output_folder('--json', args.json)
    if args.device == 'cuda':
        import torch

        if not torch.cuda.is_available():
            raise UsageError('--device cuda: no CUDA GPU here; use --device cpu')


def build_segmentor(config: str, device: str):
    """The config's segmentor: no pretrained weights, BN instead of SyncBN, default outlook
    attention implementation."""
    import mmvolo  # noqa: F401  (registers VOLO)
    import mmvolo.runtime  # noqa: F401  (the stack fixes, before mmseg)
    from mmvolo.utils import build_model_for_analysis

    model = build_model_for_analysis(resolve_config(config), outlook_impl=None)
    model.init_weights()
    return model.to(device)


def run_case(args: argparse.Namespace, name: str, mode: str) -> dict:
    """Time one (model, mode) in this process; return its record."""
    import resource

    import torch

    device = torch.device(args.device)
    model = build_segmentor(MODELS[name], args.device)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, 150, (args.batch, args.size, args.size), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train(mode == 'train')
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)

    def step() -> None:
        if mode == 'train':
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                logits = model.decode_head(model.extract_feat(images))
                logits = torch.nn.functional.interpolate(logits.float(), size=images.shape[2:],
                                                         mode='bilinear')
                loss = torch.nn.functional.cross_entropy(logits, labels)
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad(), autocast:
                model.encode_decode(images, [dict(img_shape=images.shape[2:])] * args.batch)

    def sync() -> None:
        if device.type == 'cuda':
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == 'cuda':
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:  # warm-up already reached the steady-state peak; report the process peak
        peak_mib = max(rss_before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024
    median = statistics.median(times)
    record = dict(model=name, mode=mode, device=args.device, batch=args.batch, size=args.size,
                  amp=args.amp, step_ms=median * 1e3, images_per_s=args.batch / median,
                  peak_mib=peak_mib,
                  params_m=sum(p.numel() for p in model.parameters()) / 1e6)
    if args.profile:
        record['profile'] = profile_step(model, step, sync, args.profile)
    return record


def timed_parts(model) -> dict:
    """{dotted name: [modules]} of the parts a profile reports: the children of the backbone
    and of the decode head, list/dict containers replaced by their entries. A Sequential is
    timed through its blocks (summed), since a backbone may iterate it instead of calling it."""
    import torch

    parts = {}
    for owner in ('backbone', 'decode_head'):
        for name, child in getattr(model, owner).named_children():
            entries = {name: child}
            if isinstance(child, (torch.nn.ModuleList, torch.nn.ModuleDict)):
                entries = {f'{name}.{key}': entry for key, entry in child.named_children()}
            for key, entry in entries.items():
                blocks = list(entry) if isinstance(entry, torch.nn.Sequential) else [entry]
                parts[f'{owner}.{key}'] = blocks
    return parts


def profile_step(model, step, sync, top: int) -> dict:
    """One more step with forward hooks on :func:`timed_parts` and torch.profiler: returns
    the step time, [(part, forward ms)] largest first, and the ``top`` operators' table."""
    import torch

    spent: dict = {}
    started: dict = {}
    handles = []
    for name, module in ((name, block) for name, blocks in timed_parts(model).items()
                         for block in blocks):
        def before(_module, _inputs):
            sync()
            started[id(_module)] = time.perf_counter()

        def after(_module, _inputs, _output, name=name):
            sync()
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started.pop(id(_module))
        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    try:
        with torch.profiler.profile(activities=activities) as prof:
            start = time.perf_counter()
            step()
            sync()
            total = time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
    sort_by = 'self_cuda_time_total' if len(activities) > 1 else 'self_cpu_time_total'
    return dict(step_ms=total * 1e3,
                parts=sorted(((k, v * 1e3) for k, v in spent.items()), key=lambda kv: -kv[1]),
                operators=prof.key_averages().table(sort_by=sort_by, row_limit=top))


def run_in_subprocess(argv: list[str], name: str, mode: str) -> dict:
    command = [sys.executable, '-m', 'mmvolo.analysis.benchmark_model', *argv,
               '--case', f'{name}:{mode}']
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ['(no output)']
        return dict(model=name, mode=mode, error=tail[0])
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_table(records: list[dict]) -> None:
    header = f"{'model':<18}{'mode':<7}{'step ms':>10}{'img/s':>9}{'peak MiB':>10}{'params M':>10}"
    print(header)
    print('-' * len(header))
    for rec in records:
        if 'error' in rec:
            print(f"{rec['model']:<18}{rec['mode']:<7}  failed: {rec['error']}")
            continue
        print(f"{rec['model']:<18}{rec['mode']:<7}{rec['step_ms']:>10.1f}"
              f"{rec['images_per_s']:>9.2f}{rec['peak_mib']:>10.0f}{rec['params_m']:>10.1f}")
    print_ratios(records)
    for rec in records:
        if 'profile' in rec:
            print_profile(rec)


def print_profile(record: dict) -> None:
    """Where one profiled step of a case spent its time (see ``profile_step``)."""
    profile = record['profile']
    total = profile['step_ms']
    print(f"\n{record['model']} {record['mode']}: profiled step {total:.0f} ms "
          '(forward time per part; profiler overhead included)')
    for name, ms in profile['parts']:
        print(f'  {name:<40}{ms:>9.1f} ms {100 * ms / total:>5.1f}%')
    rest = total - sum(ms for _, ms in profile['parts'])
    print(f"  {'(everything else)':<40}{rest:>9.1f} ms {100 * rest / total:>5.1f}%")
    print(profile['operators'])


def print_ratios(records: list[dict]) -> None:
    by_key = {(r['model'], r['mode']): r for r in records if 'error' not in r}
    for mode in ('train', 'infer'):
        volo, swin = by_key.get(('volo-d1_upernet', mode)), by_key.get(('swin-t_upernet', mode))
        if volo and swin:
            print(f'{mode}: VOLO-D1/Swin-T time ratio {volo["step_ms"] / swin["step_ms"]:.2f}, '
                  f'peak memory ratio {volo["peak_mib"] / swin["peak_mib"]:.2f}')


def main(argv: list[str] | None = None) -> None:
    """Entry point: run every case; UsageError on bad arguments or when a case failed."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.case:
        name, mode = args.case.split(':')
        print(json.dumps(run_case(args, name, mode)))
        return
    check_args(args)
    records = [run_in_subprocess(argv, name, mode) for name in args.models for mode in args.modes]
    print(f'device={args.device} batch={args.batch} input={args.size}x{args.size} '
          f'amp={args.amp} repeats={args.repeats} (medians)')
    print_table(records)
    write_json_report(records, args.json)
    failed = [f"{rec['model']} {rec['mode']}" for rec in records if 'error' in rec]
    if failed:
        raise UsageError(f'{len(failed)} of {len(records)} cases failed ({", ".join(failed)}); '
                         'see the table above', exit_code=1)


if __name__ == '__main__':
    run_tool(main)
