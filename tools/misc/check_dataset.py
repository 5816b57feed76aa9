"""Check a config's datasets in full: every file, every label map (docs/datasets.md).

    python tools/misc/check_dataset.py CONFIG [--all] [--sample N] [--cfg-options ...]

Per split (train / val / test dataset config): image count, pairing with label maps,
unreadable / empty / non-image files, the label values seen against the model's
``num_classes`` and ``ignore_index`` (after ``reduce_zero_label``), image/label size
agreement. The file lists are mmseg's own (the dataset class from the config, its
``data_root``, ``data_prefix``, suffixes, ``ann_file``). ``--all`` also decodes every image
(else only its header is read); ``--sample N`` reads N label maps per split (the tools'
pre-flight check reads 16).

Exit status: 0 when every split is clean, 1 when there are findings (each one line naming the
fix), 2 for bad arguments or a config without datasets.
"""
from __future__ import annotations

import argparse
import sys
import time

import mmvolo  # noqa: F401  (registers VOLO; mmvolo.cli applies mmvolo.runtime)
from mmvolo.cli import UsageError, check_data_roots, load_config, run_tool
from mmvolo.cli.arguments import ToolArgumentParser, add_cfg_options
from mmvolo.datasets.loader_settings import DATALOADERS, dataloader_problems
from mmvolo.datasets.preflight import check_datasets, format_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = ToolArgumentParser(description='Check the datasets of a config')
    parser.add_argument('config', help='config file')
    parser.add_argument('--all', action='store_true',
                        help='also decode every image (slower; else its header is read)')
    parser.add_argument('--sample', type=int, metavar='N',
                        help='read N label maps per split (default: all)')
    add_cfg_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    if args.sample is not None and args.sample < 1:
        raise UsageError(f'--sample {args.sample}: must be >= 1 (leave it out to read all)')
    cfg = load_config(args.config, args.cfg_options)
    loaders = [key for key in DATALOADERS if isinstance(cfg.get(key), dict)]
    if not loaders:
        raise UsageError(f'{args.config} defines no train/val/test_dataloader: pass a '
                         'segmentation config')
    check_data_roots(cfg, loaders)
    start = time.perf_counter()
    reports = check_datasets(cfg, loaders, sample=args.sample, decode_images=args.all)
    for report in reports:
        print('\n'.join(format_report(report)))
    problems = dataloader_problems(cfg, loaders)
    for problem in problems:
        print(f'problem: {problem}')
    findings = sum(len(report.findings) for report in reports) + len(problems)
    images = sum(report.images for report in reports)
    verdict = 'no problems' if not findings else f'{findings} problem(s)'
    print(f'{verdict} in {len(reports)} split(s), {images} images, '
          f'{time.perf_counter() - start:.1f} s')
    return 1 if findings else 0


if __name__ == '__main__':
    run_tool(lambda: sys.exit(main()))
