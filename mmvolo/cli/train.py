"""Train a segmentor (mmseg's train CLI, with mmvolo's modules and runtime fixes).

The logic behind ``tools/train.py`` (a thin command line over :func:`main`).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CHECKPOINT]] [--amp] [--trust]
                          [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Checkpoints are written atomically and carry every RNG state, so ``--resume`` continues a
killed run exactly (docs/reliability.md). Checkpoints load without running pickled code;
``--trust`` allows it for the ``--resume``/``load_from`` file of this run.

Multi-GPU / multi-node: ``tools/dist_train.sh``; slurm: ``tools/slurm_train.sh``.
"""
from __future__ import annotations

import argparse

from mmengine.config import Config
from mmengine.runner import Runner

import mmvolo  # noqa: F401 - registers VOLO, its hooks and optimizer constructor
from mmvolo import runtime  # the stack fixes, before mmseg loads
from mmvolo.cli import (
    UsageError,
    apply_work_dir,
    check_arch,
    check_data_files,
    check_data_roots,
    check_load_from,
    check_seg_config,
    checkpoint_meta,
    enable_amp,
    is_main_process,
    load_config,
    parse_tool_args,
    prepare_device,
    resolve_resume,
)
from mmvolo.cli.arguments import ToolArgumentParser
from mmvolo.cli.output_paths import check_output_folders
from mmvolo.datasets.loader_settings import fit_persistent_workers, train_batch_size
from mmvolo.models.single_value_bn import guard_single_value_batchnorm


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ToolArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go')
    parser.add_argument(
        '--resume', nargs='?', const='auto', default=None, metavar='CHECKPOINT',
        help='resume training: from CHECKPOINT if given, else from the latest checkpoint in '
        'the work dir')
    parser.add_argument('--amp', action='store_true', help='mixed-precision training (GPU)')
    parser.add_argument('--trust', action='store_true',
                        help='unpickle the --resume / load_from checkpoint with full trust '
                        '(runs code inside it; only for files you trust)')
    return parse_tool_args(parser, argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    check_seg_config(cfg, args.config, 'train')
    check_arch(cfg)
    loaders = ['train_dataloader'] + (['val_dataloader'] if cfg.get('val_cfg') else [])
    check_data_roots(cfg, loaders)
    check_data_files(cfg, loaders, args.config)
    fit_persistent_workers(cfg, loaders)
    cfg.launcher = args.launcher
    apply_work_dir(cfg, args.config, args.work_dir)
    check_output_folders(cfg, {'--work-dir': cfg.work_dir})
    if args.amp:
        enable_amp(cfg)
    runtime.harden_runner_cfg(cfg)
    apply_resume(cfg, args.resume, args.trust)
    if cfg.get('load_from') and not cfg.resume:
        if args.trust:
            runtime.trust_checkpoint(cfg.load_from)
        summary = check_load_from(cfg.load_from, cfg, trust=args.trust)
        if is_main_process():
            print(summary, flush=True)
    notice = prepare_device(cfg, args.launcher)
    if notice and is_main_process():
        print(notice, flush=True)
    runner = build_runner(cfg)
    guard_batch_of_one(runner, cfg)
    runner.train()
    del runner  # free the DDP model before its process group goes
    runtime.shutdown_process_group()


def apply_resume(cfg: Config, resume: str | None, trust: bool) -> None:
    """``--resume``: the work dir's latest checkpoint ('auto') or the given file, checked
    intact; the config's seed becomes the checkpoint's when the config sets none, so the
    samplers and data workers are built with the seed the run started with."""
    checkpoint = resolve_resume(resume, cfg.work_dir)
    cfg.resume = checkpoint is not None
    if checkpoint is None:
        return
    cfg.load_from = checkpoint
    if trust:
        runtime.trust_checkpoint(checkpoint)
    meta = checkpoint_meta(checkpoint, trust)
    if 'iter' not in meta or 'epoch' not in meta:
        raise UsageError(f'--resume {checkpoint} holds no training state (not a checkpoint '
                         'saved by a training run); to start from its weights, set '
                         f'load_from={checkpoint} without --resume')
    randomness = cfg.setdefault('randomness', {})
    if randomness.get('seed') is None and meta.get('seed') is not None:
        randomness['seed'] = meta['seed']


def guard_batch_of_one(runner: Runner, cfg: Config) -> None:
    """One image per process: BatchNorm layers fed one value per channel (UPerHead's
    1x1-pooled branch) normalise with their running statistics instead of raising
    (:mod:`mmvolo.models.single_value_bn`; batch >= 2 is left as it is)."""
    if train_batch_size(cfg) != 1 or not guard_single_value_batchnorm(runner.model):
        return
    if is_main_process():
        print('[mmvolo] batch 1 per process: BatchNorm layers that see one value per channel '
              "(the decode head's 1x1-pooled branch) use their running statistics "
              '(docs/datasets.md)', flush=True)


def build_runner(cfg: Config) -> Runner:
    """mmengine's Runner, or the config's ``runner_type`` from mmseg's registry."""
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    from mmseg.registry import RUNNERS
    return RUNNERS.build(cfg)
