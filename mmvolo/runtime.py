"""What the OpenMMLab stack gets wrong on today's torch, fixed once, here, explicitly.

``import mmvolo`` only registers modules. The host stack changes only where this module is
imported: mmvolo's tools import it, and mmvolo's configs list it in ``custom_imports``::

    custom_imports = dict(imports=['mmvolo.runtime', 'mmvolo'], allow_failed_imports=False)

so mmseg's own ``tools/train.py`` and ``mim train mmseg`` get the same fixes. Importing it
applies :func:`apply` (once); the distributed and config fixes are functions the tools call.
Each fix is one function with its reason in its docstring and a test in
``tests/test_runtime.py``:

1. :func:`install_mmcv_ext_standin`: mmcv-lite has no compiled ops; mmseg imports them.
2. :func:`silence_unactionable_warnings`, :func:`filter_unactionable_log_records`: noise.
3. :func:`register_checkpoint_loader`: weights-only loading that still resumes the Runner.
4. :func:`init_cpu_process_group`, :func:`adapt_cfg_to_cpu`, :func:`shutdown_process_group`:
   distributed training without CUDA.
5. :func:`harden_runner_cfg`: atomic checkpoints and exact resume for any config.
"""
from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
import types
import warnings
from typing import Any

from .utils.config import replace_norm_type

_trusted_paths: set[str] = set()


# --------------------------------------------------------------------------------------------
# 1. mmcv-lite has no compiled ops, but mmseg imports mmcv.ops unconditionally.
# --------------------------------------------------------------------------------------------
class _MissingOp:
    """Placeholder for a compiled mmcv op: importable, fails with the fix when called."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"mmcv op '{self.name}' needs full mmcv (compiled ops); this environment has "
            "mmcv-lite. Install mmcv 2.1 with its CUDA/CPU ops to use it.")


def _make_mmcv_ext_standin() -> types.ModuleType:
    module = types.ModuleType('mmcv._ext')
    module.__doc__ = 'mmvolo stand-in for mmcv-lite: every op raises a clear error when called.'
    # A spec with loader None: mmengine's mmcv_full_available() reads __spec__ and must
    # conclude that full mmcv is absent (otherwise revert_sync_batchnorm imports mmcv.ops).
    module.__spec__ = importlib.machinery.ModuleSpec('mmcv._ext', loader=None)

    def __getattr__(name: str) -> _MissingOp:
        if name.startswith('__'):
            raise AttributeError(name)
        return _MissingOp(name)

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return module


def install_mmcv_ext_standin() -> bool:
    """Make ``import mmseg.models`` work with mmcv-lite.

    mmcv-lite ships no ``mmcv._ext``, yet mmseg 1.2.x imports ``mmcv.ops`` at module level
    (``mmseg/utils/mask_classification.py`` and others), which loads ``mmcv._ext`` and checks
    that each op exists. Registers a stand-in module whose ops exist but raise a RuntimeError
    naming the fix when called. Does nothing when real compiled ops are installed.

    Returns:
        True if the stand-in was installed.
    """
    if 'mmcv._ext' in sys.modules:
        return False
    try:
        if importlib.util.find_spec('mmcv') is None:
            return False
        if importlib.util.find_spec('mmcv._ext') is not None:
            return False
    except (ImportError, ValueError):
        return False
    sys.modules['mmcv._ext'] = _make_mmcv_ext_standin()
    return True


# --------------------------------------------------------------------------------------------
# 2. Warnings users cannot act on.
# --------------------------------------------------------------------------------------------
_UNACTIONABLE_WARNINGS = (
    # setuptools, each time mmengine resolves an `mmseg::` config base through pkg_resources
    (r'pkg_resources is deprecated', UserWarning),
    # mmengine's FileClient / mmseg's own deprecations triggered inside mmseg, not by users
    (r'.*FileClient.*deprecated', DeprecationWarning),
    (r'.*``build_loss`` would be deprecated', UserWarning),
    (r'.*reduce_zero_label.*deprecated', UserWarning),
    # mmseg's SegVisualizationHook, on every run whose default config leaves draw=False
    (r'The draw is False', UserWarning),
)


def silence_unactionable_warnings() -> None:
    """Filter the stack's warnings that say nothing a user of mmvolo can change.

    ``pkg_resources is deprecated`` appears several times per config load; mmseg's and
    mmengine's deprecation notices come from their own internals. Only these exact messages are
    filtered; every other warning still shows.
    """
    for message, category in _UNACTIONABLE_WARNINGS:
        warnings.filterwarnings('ignore', message=message, category=category)


#: Substrings of mmengine log records (logger warnings, not Python warnings) that users of
#: mmvolo cannot act on: mmengine's own deprecations triggered by mmseg internals, and mmseg's
#: IoUMetric not setting a metric prefix.
UNACTIONABLE_LOG_MESSAGES = (
    '"FileClient" will be deprecated in future',
    '"HardDiskBackend" is the alias of "LocalBackend"',
    'The prefix is not set in metric class',
)


class _DropUnactionableRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(text in message for text in UNACTIONABLE_LOG_MESSAGES)


def filter_unactionable_log_records() -> None:
    """Drop mmengine log records that say nothing a user can change.

    mmengine reports its FileClient/HardDiskBackend deprecations (used by mmseg's transforms and
    hooks) and the missing IoUMetric prefix through its MMLogger at WARNING level on every
    run, so the warning filters above do not reach them. Every MMLogger, present and future,
    gets a logging filter dropping exactly those records.
    """
    from mmengine.logging import MMLogger

    if getattr(MMLogger.__init__, '_mmvolo_filtered', False):
        return
    original_init = MMLogger.__init__

    @functools.wraps(original_init)
    def init_with_filter(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.addFilter(_DropUnactionableRecords())

    init_with_filter._mmvolo_filtered = True  # type: ignore[attr-defined]
    MMLogger.__init__ = init_with_filter
    for logger in MMLogger._instance_dict.values():
        logger.addFilter(_DropUnactionableRecords())


# --------------------------------------------------------------------------------------------
# 3. torch>=2.6 loads with weights_only=True; mmengine's own checkpoints need more.
# --------------------------------------------------------------------------------------------
def trust_checkpoint(path: str | os.PathLike) -> None:
    """Allow full unpickling of ``path`` (the user named it with ``--trust``). Nothing else
    is ever trusted: not a folder, a marker file or an environment variable."""
    _trusted_paths.add(os.path.realpath(os.fspath(path)))


def is_trusted_checkpoint(path: str | os.PathLike) -> bool:
    """True if ``path`` was given to :func:`trust_checkpoint`."""
    return os.path.realpath(os.fspath(path)) in _trusted_paths


def register_checkpoint_loader() -> None:
    """Route mmengine's local-file checkpoint loading through mmvolo's one loader.

    torch >= 2.6 defaults to ``weights_only=True``, and the Runner's checkpoints hold
    ``HistoryBuffer``, numpy arrays and ``getattr`` records: ``--resume``, ``load_from`` and
    ``mmseg.apis.init_model`` fail with "Weights only load failed". mmengine's local loader
    is replaced by :func:`mmvolo.checkpoint.load_checkpoint_file`, which allows exactly what
    the Runner writes and runs no pickled code, unless the file was named with ``--trust``
    (:func:`trust_checkpoint`). Bad files fail with one line naming the file.
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    from .checkpoint import load_checkpoint_file

    def load_from_local(filename: str, map_location: Any) -> Any:
        filename = os.path.expanduser(filename)
        return load_checkpoint_file(filename, map_location,
                                    trust=is_trusted_checkpoint(filename))

    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)


# --------------------------------------------------------------------------------------------
# 4. Distributed training on machines without CUDA.
# --------------------------------------------------------------------------------------------
def init_cpu_process_group(launcher: str) -> bool:
    """Start a gloo process group for a CPU-only ``torchrun``/slurm launch.

    mmengine's ``init_dist`` for the 'pytorch' launcher calls ``torch.cuda.set_device``
    unconditionally, which fails without a GPU ("Found no NVIDIA driver" or
    "_cuda_setDevice"). When CUDA is absent, initialise the group with gloo from the launcher's
    environment first; the Runner then skips its own initialisation.

    Returns:
        True if a gloo group was started here.
    """
    import torch
    import torch.distributed as dist

    if launcher == 'none' or torch.cuda.is_available() or dist.is_initialized():
        return False
    if launcher == 'slurm':
        _export_slurm_env()
    elif launcher == 'mpi':
        _export_mpi_env()
    dist.init_process_group(backend='gloo')
    return True


def _export_slurm_env() -> None:
    """Fill torch's env:// variables from slurm's (as mmengine's slurm launcher does)."""
    env = os.environ
    env.setdefault('RANK', env.get('SLURM_PROCID', '0'))
    env.setdefault('WORLD_SIZE', env.get('SLURM_NTASKS', '1'))
    env.setdefault('LOCAL_RANK', env.get('SLURM_LOCALID', '0'))
    env.setdefault('MASTER_PORT', '29500')
    if 'MASTER_ADDR' not in env:
        env['MASTER_ADDR'] = first_slurm_host(env.get('SLURM_NODELIST', '127.0.0.1'))


def first_slurm_host(nodelist: str) -> str:
    """First host of a slurm node list: 'gpu-node[03-05,7],x' -> 'gpu-node03'.

    (What ``scontrol show hostnames`` prints first, without needing scontrol.)
    """
    found = re.match(r'([^,\[]+)(?:\[([^\]]+)\])?', nodelist.strip())
    if not found:
        return nodelist
    prefix, ranges = found.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(',')[0].split('-')[0]


def _export_mpi_env() -> None:
    """Fill torch's env:// variables from Open MPI's (as mmengine's mpi launcher does)."""
    env = os.environ
    env.setdefault('RANK', env.get('OMPI_COMM_WORLD_RANK', '0'))
    env.setdefault('WORLD_SIZE', env.get('OMPI_COMM_WORLD_SIZE', '1'))
    env.setdefault('LOCAL_RANK', env.get('OMPI_COMM_WORLD_LOCAL_RANK', '0'))
    env.setdefault('MASTER_PORT', '29500')
    env.setdefault('MASTER_ADDR', '127.0.0.1')


def adapt_cfg_to_cpu(cfg: Any) -> list[str]:
    """Rewrite a Runner config in place so it runs where CUDA is absent.

    - ``env_cfg.dist_cfg.backend``: mmseg's runtime says 'nccl'; gloo is the CPU backend.
    - ``model_wrapper_cfg``: DDP on a CPU model needs ``device_ids=None`` explicitly
      ("device_ids ... CPU modules, but got device_ids [0]").
    - SyncBN cannot run on CPU DDP: every ``SyncBN`` norm config becomes ``BN``
      (single-process runs revert SyncBN by themselves).

    Returns:
        One short phrase per change made (for a one-line notice).
    """
    changes: list[str] = []
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') != 'gloo':
        dist_cfg['backend'] = 'gloo'
        changes.append('gloo backend')
    wrapper = cfg.get('model_wrapper_cfg') or {'type': 'MMDistributedDataParallel'}
    if 'device_ids' not in wrapper or wrapper['device_ids'] is not None:
        wrapper['device_ids'] = None
        cfg['model_wrapper_cfg'] = wrapper
        changes.append('DDP without device ids')
    if replace_norm_type(cfg.get('model'), 'SyncBN', 'BN'):
        changes.append('SyncBN -> BN')
    return changes


def shutdown_process_group() -> None:
    """Free what still uses the process group, barrier, then destroy the group.

    Without it about 1 in 8 CPU (gloo) runs aborted at exit with "terminate called without an
    active exception" (0 in 16 with it). The tools drop their Runner first; the garbage
    collection here frees its DDP wrapper (whose reducer holds the group) before the group
    goes, so nothing is left for the interpreter to tear down in the wrong order.
    """
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# 5. Checkpoints that survive interruption; resume that continues every random stream.
# --------------------------------------------------------------------------------------------
def harden_runner_cfg(cfg: Any) -> list[str]:
    """Give a Runner config atomic checkpoints and exact resume (mmvolo's configs have both).

    mmengine's ``CheckpointHook`` writes into the final file name (a full disk leaves a
    half-written ``iter_N.pth``) and its resume restarts the random streams from the seed.
    A plain ``CheckpointHook`` becomes :class:`mmvolo.engine.AtomicCheckpointHook` (same
    arguments) and :class:`mmvolo.engine.RNGStateHook` is added unless present.

    Returns:
        One short phrase per change made.
    """
    changes: list[str] = []
    hooks = cfg.setdefault('default_hooks', {})
    checkpoint = hooks.get('checkpoint')
    if isinstance(checkpoint, dict) and checkpoint.get('type') in ('CheckpointHook', None):
        checkpoint['type'] = 'AtomicCheckpointHook'
        changes.append('atomic checkpoints')
    custom_hooks = list(cfg.get('custom_hooks') or [])
    if not any(isinstance(hook, dict) and hook.get('type') == 'RNGStateHook'
               for hook in custom_hooks):
        custom_hooks.append(dict(type='RNGStateHook'))
        cfg['custom_hooks'] = custom_hooks
        changes.append('RNG states in checkpoints')
    return changes


# --------------------------------------------------------------------------------------------
_applied = False


def apply() -> None:
    """The fixes importing this module applies (before mmseg is imported); idempotent."""
    global _applied
    if _applied:
        return
    silence_unactionable_warnings()
    filter_unactionable_log_records()
    install_mmcv_ext_standin()
    register_checkpoint_loader()
    _applied = True


apply()

