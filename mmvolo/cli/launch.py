"""Preparing a Runner config for the machine it runs on, and running a tool's ``main``."""
from __future__ import annotations

import argparse
import errno
import os
import os.path as osp
import sys
from typing import Callable

from mmengine.config import Config

from .. import runtime
from ..checkpoint import CheckpointError, UntrustedCheckpointError
from .arguments import add_cfg_options
from .checks import UsageError, untrusted_usage_error

#: ``OSError.errno`` of a full disk or an exhausted quota.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def run_tool(main: Callable[[], None]) -> None:
    """Run a tool's ``main``; bad input ends in one line on stderr and its exit code."""
    try:
        main()
    except UsageError as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(error.exit_code)
    except UntrustedCheckpointError as error:
        print(f'error: {untrusted_usage_error(error)}', file=sys.stderr)
        sys.exit(1)
    except CheckpointError as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        if error.errno not in DISK_FULL_ERRNOS:
            raise
        print(f'error: no space left on the disk writing {error.filename or "a file"}; '
              'nothing was half-written: free space, then rerun (training: --resume)',
              file=sys.stderr)
        sys.exit(1)


def apply_work_dir(cfg: Config, config_path: str, work_dir: str | None) -> None:
    """Set ``cfg.work_dir``: the CLI's, else the config's, else ``work_dirs/<config name>``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])
    require_folder(cfg.work_dir, '--work-dir')


def require_folder(path: str, option: str) -> None:
    """``path`` must be a folder or not exist yet (it is created), not a file."""
    if osp.exists(path) and not osp.isdir(path):
        raise UsageError(f'{option} {path} is a file, not a folder: pass a folder (it is '
                         'created if missing)')


def enable_amp(cfg: Config) -> None:
    """Switch the optimizer wrapper to mixed precision (needs a GPU)."""
    import torch

    if not torch.cuda.is_available():
        raise UsageError('--amp needs a CUDA GPU (mixed precision is not supported on CPU); '
                         'drop --amp')
    wrapper = cfg.optim_wrapper
    if wrapper.get('type') == 'AmpOptimWrapper':
        return
    if wrapper.get('type', 'OptimWrapper') != 'OptimWrapper':
        raise UsageError(f"--amp works with optim_wrapper type 'OptimWrapper', this config has "
                         f"'{wrapper.get('type')}'")
    wrapper.type = 'AmpOptimWrapper'
    wrapper.loss_scale = 'dynamic'


def prepare_device(cfg: Config, launcher: str) -> str | None:
    """Adapt ``cfg`` (and the process group) to a machine without CUDA.

    With CUDA this does nothing. Without it, a distributed launch gets a gloo process group
    (:func:`mmvolo.runtime.init_cpu_process_group`) and a CPU-ready config
    (:func:`mmvolo.runtime.adapt_cfg_to_cpu`); a single process needs no change (the
    Runner reverts SyncBN to BN by itself).

    Returns:
        The one-line notice to print (rank 0 prints it), or None with CUDA.
    """
    import torch

    if torch.cuda.is_available():
        return None
    if launcher == 'none':
        return '[mmvolo] no CUDA: running on CPU (single process; SyncBN, if any, -> BN)'
    runtime.init_cpu_process_group(launcher)
    changes = runtime.adapt_cfg_to_cpu(cfg)
    return f'[mmvolo] no CUDA: running on CPU ({", ".join(changes) or "as configured"})'


def is_main_process() -> bool:
    """True on rank 0 (or when not distributed)."""
    return os.environ.get('RANK', '0') == '0'


def set_local_rank(local_rank: int) -> None:
    """Export ``LOCAL_RANK`` for launchers that pass ``--local-rank`` instead."""
    os.environ.setdefault('LOCAL_RANK', str(local_rank))


def parse_tool_args(parser: argparse.ArgumentParser,
                    argv: list[str] | None = None) -> argparse.Namespace:
    """Add the options every mmvolo tool shares (``--cfg-options``, ``--launcher``,
    ``--local-rank``), parse the command line and export ``LOCAL_RANK``.

    Raises:
        UsageError: a malformed ``--cfg-options`` item (one line naming it).
    """
    add_cfg_options(parser)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    set_local_rank(args.local_rank)
    return args
