"""Model-level benchmark: VOLO UperNet vs mmseg's Swin-T UperNet, same batch, same run.

Measures, per model and mode (``train``: forward + backward + AdamW step; ``infer``: forward
in eval mode under no_grad), the median step time over ``--repeats`` timed steps (after
``--warmup``), images/s, and peak memory. Each (model, mode) case runs in its own subprocess
so peaks do not leak between cases. Peak memory is ``torch.cuda.max_memory_allocated`` on GPU
and the growth of the process's peak RSS over the built model on CPU (``ru_maxrss``).

    python tools/analysis/benchmark_model.py --device cuda --batch 8 --size 512
    python tools/analysis/benchmark_model.py --device cpu --batch 1 --size 256 --repeats 3
    python tools/analysis/benchmark_model.py ... --json results.json

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

from mmvolo.apis import UsageError, run_tool
from mmvolo.apis.arguments import ToolArgumentParser, check_output_folder

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
    parser.add_argument('--case', help=argparse.SUPPRESS)  # internal: run one case, print JSON
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse arguments no case could run with, before running any (UsageError)."""
    for flag, value, low in (('--batch', args.batch, 1), ('--size', args.size, 32),
                             ('--repeats', args.repeats, 1), ('--warmup', args.warmup, 0)):
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
    return dict(model=name, mode=mode, device=args.device, batch=args.batch, size=args.size,
                amp=args.amp, step_ms=median * 1e3, images_per_s=args.batch / median,
                peak_mib=peak_mib,
                params_m=sum(p.numel() for p in model.parameters()) / 1e6)


def run_in_subprocess(argv: list[str], name: str, mode: str) -> dict:
    command = [sys.executable, __file__, *argv, '--case', f'{name}:{mode}']
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
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
    failed = [f"{rec['model']} {rec['mode']}" for rec in records if 'error' in rec]
    if failed:
        raise UsageError(f'{len(failed)} of {len(records)} cases failed ({", ".join(failed)}); '
                         'see the table above', exit_code=1)


if __name__ == '__main__':
    run_tool(main)
