"""Train a segmentor (mmseg's train CLI, with mmvolo's modules and stack fixes).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CHECKPOINT]] [--amp]
                          [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Multi-GPU / multi-node: ``tools/dist_train.sh``; slurm: ``tools/slurm_train.sh``.
"""
from __future__ import annotations

import argparse
import os.path as osp

from mmengine.config import Config
from mmengine.runner import Runner

import mmvolo  # noqa: F401 - registers VOLO and applies the stack fixes before mmseg loads
from mmvolo import stack_fixes
from mmvolo.apis import (
    UsageError,
    apply_work_dir,
    check_arch,
    check_data_roots,
    check_seg_config,
    enable_amp,
    is_main_process,
    load_config,
    parse_tool_args,
    prepare_device,
    run_tool,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go')
    parser.add_argument(
        '--resume', nargs='?', const='auto', default=None, metavar='CHECKPOINT',
        help='resume training: from CHECKPOINT if given, else from the latest checkpoint in '
        'the work dir')
    parser.add_argument('--amp', action='store_true', help='mixed-precision training (GPU)')
    return parse_tool_args(parser)


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    check_seg_config(cfg, args.config, 'train')
    check_arch(cfg)
    loaders = ['train_dataloader'] + (['val_dataloader'] if cfg.get('val_cfg') else [])
    check_data_roots(cfg, loaders)
    cfg.launcher = args.launcher
    apply_work_dir(cfg, args.config, args.work_dir)
    if args.amp:
        enable_amp(cfg)
    apply_resume(cfg, args.resume)
    if cfg.get('load_from'):
        stack_fixes.trust_checkpoint(cfg.load_from)
    notice = prepare_device(cfg, args.launcher)
    if notice and is_main_process():
        print(notice, flush=True)
    runner = build_runner(cfg)
    runner.train()
    del runner  # free the DDP model before its process group goes
    stack_fixes.shutdown_process_group()


def apply_resume(cfg: Config, resume: str | None) -> None:
    """``--resume``: the latest checkpoint of the work dir ('auto') or the given file."""
    cfg.resume = resume is not None
    if resume in (None, 'auto'):
        return
    if not osp.isfile(resume):
        raise UsageError(f'--resume checkpoint {resume} not found')
    stack_fixes.trust_checkpoint(resume)
    cfg.load_from = resume


def build_runner(cfg: Config) -> Runner:
    """mmengine's Runner, or the config's ``runner_type`` from mmseg's registry."""
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    from mmseg.registry import RUNNERS
    return RUNNERS.build(cfg)


if __name__ == '__main__':
    run_tool(main)
