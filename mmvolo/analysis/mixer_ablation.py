"""Token-mixer ablation on the toy data: train each ``configs/ablation`` config with several
seeds and print final mIoU per mixer (median and spread) as a table.

Each run is ``tools/train.py CONFIG --work-dir WORK/<mixer>/seed<S> --cfg-options
randomness.seed=S`` (the quick-start recipe: 800 iterations, validation at 400 and 800) with
one thread per process; ``--jobs`` runs that many at once. The final mIoU is the last
validation record of the run's ``vis_data/scalars.json``. The toy data is generated into
``work_dirs/toy_data`` (the configs' data root) when absent.

Example: ``python tools/analysis/mixer_ablation.py --seeds 0 1 2 --jobs 2 --json ablation.json``
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mmvolo.cli import UsageError
from mmvolo.cli.arguments import ToolArgumentParser, check_output_folder, write_json_report

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / 'configs' / 'ablation'
TOY_DATA = ROOT / 'work_dirs' / 'toy_data'


def ablation_configs() -> dict[str, Path]:
    """{mixer short name: config}, e.g. ``'involution'`` for ``volo-toy-involution_...``."""
    return {path.name.split('_')[0].removeprefix('volo-toy-'): path
            for path in sorted(CONFIG_DIR.glob('volo-toy-*.py'))}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ToolArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mixers', nargs='+', default=None,
                        help=f'subset of {sorted(ablation_configs())} (default: all)')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--jobs', type=int, default=1, help='runs at once (default 1)')
    parser.add_argument('--work-dir', default='work_dirs/ablation')
    parser.add_argument('--json', default=None, help='also write the records here')
    args = parser.parse_args(argv)
    known = ablation_configs()
    args.mixers = args.mixers or list(known)
    unknown = [name for name in args.mixers if name not in known]
    if unknown:
        raise UsageError(f'--mixers: unknown {unknown}; choose from {sorted(known)}')
    if args.jobs < 1:
        raise UsageError('--jobs must be >= 1')
    check_output_folder('--json', args.json)
    return args


def train_once(config: Path, seed: int, work_dir: Path) -> dict:
    """Train one config with one seed; returns its record (final mIoU, wall seconds)."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    command = [sys.executable, str(ROOT / 'tools' / 'train.py'), str(config), '--work-dir',
               str(work_dir), '--cfg-options', f'randomness.seed={seed}']
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        tail = (result.stderr.strip().splitlines() or ['no output'])[-1]
        raise UsageError(f'{config.name} seed {seed} failed (exit {result.returncode}): {tail}',
                         exit_code=1)
    return dict(seed=seed, miou=final_miou(work_dir), seconds=round(seconds, 1))


def final_miou(work_dir: Path) -> float:
    """The last ``mIoU`` logged under ``work_dir/*/vis_data/scalars.json``."""
    records = [json.loads(line) for path in sorted(work_dir.glob('*/vis_data/scalars.json'))
               for line in path.read_text().splitlines()]
    values = [record['mIoU'] for record in records if 'mIoU' in record]
    if not values:
        raise UsageError(f'{work_dir}: no mIoU was logged', exit_code=1)
    return float(values[-1])


def summarise(mixer: str, runs: list[dict]) -> dict:
    mious = [run['miou'] for run in runs]
    return dict(mixer=mixer, runs=runs, median_miou=statistics.median(mious),
                spread=max(mious) - min(mious),
                median_seconds=statistics.median(run['seconds'] for run in runs))


def print_table(rows: list[dict]) -> None:
    print(f"{'mixer':<12} {'mIoU per seed':<28} {'median':>7} {'spread':>7} {'train s':>8}")
    for row in rows:
        seeds = ' '.join(f"{run['miou']:.1f}" for run in row['runs'])
        print(f"{row['mixer']:<12} {seeds:<28} {row['median_miou']:>7.1f} "
              f"{row['spread']:>7.1f} {row['median_seconds']:>8.0f}")


def ensure_toy_data() -> None:
    if not (TOY_DATA / 'annotations' / 'validation').is_dir():
        subprocess.run([sys.executable, str(ROOT / 'tools' / 'make_toy_dataset.py'),
                        str(TOY_DATA)], cwd=ROOT, check=True, capture_output=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ensure_toy_data()
    configs, work = ablation_configs(), Path(args.work_dir)
    jobs = [(mixer, seed) for mixer in args.mixers for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {job: pool.submit(train_once, configs[job[0]], job[1],
                                    work / job[0] / f'seed{job[1]}') for job in jobs}
        runs = {job: future.result() for job, future in futures.items()}
    rows = [summarise(mixer, [runs[(mixer, seed)] for seed in args.seeds])
            for mixer in args.mixers]
    print_table(rows)
    if args.json:
        write_json_report(rows, args.json)

