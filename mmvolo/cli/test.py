"""Test (and evaluate) a segmentor checkpoint (mmseg's test CLI, with mmvolo's fixes).

The logic behind ``tools/test.py`` (a thin command line over :func:`main`).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out DIR] [--show]
                         [--show-dir DIR] [--wait-time S] [--tta] [--trust] [--cfg-options ...]
                         [--launcher {none,pytorch,slurm,mpi}]

Multi-GPU: ``tools/dist_test.sh``; slurm: ``tools/slurm_test.sh``.
"""
from __future__ import annotations

import argparse
import os.path as osp

from mmengine.config import Config
from mmengine.runner import Runner

import mmvolo  # noqa: F401 - registers VOLO and its modules
from mmvolo import runtime  # the stack fixes, before mmseg loads
from mmvolo.cli import (
    UsageError,
    apply_work_dir,
    check_arch,
    check_checkpoint,
    check_data_files,
    check_data_roots,
    check_seg_config,
    is_main_process,
    load_config,
    parse_tool_args,
    prepare_device,
)
from mmvolo.cli.arguments import ToolArgumentParser
from mmvolo.cli.launch import require_folder
from mmvolo.cli.output_paths import check_output_folders
from mmvolo.datasets.loader_settings import fit_persistent_workers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ToolArgumentParser(description='Test (and evaluate) a segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file or http(s):// URL (downloaded '
                        'once into the torch hub cache)')
    parser.add_argument('--work-dir', help='where the metrics (json) and logs go')
    parser.add_argument('--out', help='directory to save the predictions (label PNGs)')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--show-dir', help='save painted predictions under the run folder '
                        'of the work dir, in this sub-directory')
    parser.add_argument('--wait-time', type=float, default=2, help='--show interval (s)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    parser.add_argument('--trust', action='store_true',
                        help='unpickle CHECKPOINT with full trust (runs code inside it; only '
                        'for files you trust)')
    return parse_tool_args(parser, argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    check_seg_config(cfg, args.config, 'test')
    check_arch(cfg)
    check_data_roots(cfg, ['test_dataloader'])
    check_data_files(cfg, ['test_dataloader'], args.config)
    fit_persistent_workers(cfg, ['test_dataloader'])
    check_checkpoint(args.checkpoint, cfg, trust=args.trust)
    if args.trust:
        runtime.trust_checkpoint(args.checkpoint)
    cfg.launcher = args.launcher
    apply_work_dir(cfg, args.config, args.work_dir)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        enable_visualization(cfg, args.show, args.show_dir, args.wait_time)
    if args.tta:
        enable_tta(cfg)
    for option, folder in (('--out', args.out), ('--show-dir', args.show_dir)):
        if folder is not None:
            require_folder(folder, option)
    show_dir = args.show_dir and osp.join(cfg.work_dir, '<timestamp>', args.show_dir)
    check_output_folders(cfg, {'--work-dir': cfg.work_dir, '--out': args.out,
                               '--show-dir': show_dir})
    if args.out is not None:
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    notice = prepare_device(cfg, args.launcher)
    if notice and is_main_process():
        print(notice, flush=True)
    runner = Runner.from_cfg(cfg)
    runner.test()
    del runner  # free the DDP model before its process group goes
    runtime.shutdown_process_group()


def enable_visualization(cfg: Config, show: bool, show_dir: str | None,
                         wait_time: float) -> None:
    """Turn on mmseg's SegVisualizationHook (painted predictions)."""
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise UsageError('--show/--show-dir need default_hooks.visualization='
                         "dict(type='SegVisualizationHook') in the config")
    hook['draw'] = True
    if show:
        hook['show'] = True
        hook['wait_time'] = wait_time
    if show_dir:
        cfg.visualizer['save_dir'] = show_dir


def enable_tta(cfg: Config) -> None:
    """Wrap the model in the config's ``tta_model`` with its ``tta_pipeline``."""
    if not cfg.get('tta_model') or not cfg.get('tta_pipeline'):
        raise UsageError('--tta needs tta_model and tta_pipeline in the config')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model
