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

One submodule per fix family; this package re-exports them.
"""
from __future__ import annotations

from .checkpoints import is_trusted_checkpoint, register_checkpoint_loader, trust_checkpoint
from .distributed import (
    _export_mpi_env,
    _export_slurm_env,
    adapt_cfg_to_cpu,
    first_slurm_host,
    init_cpu_process_group,
    shutdown_process_group,
)
from .hardening import harden_runner_cfg
from .mmcv_ext import install_mmcv_ext_standin
from .noise import (
    UNACTIONABLE_LOG_MESSAGES,
    filter_unactionable_log_records,
    silence_unactionable_warnings,
)

__all__ = ['UNACTIONABLE_LOG_MESSAGES', 'adapt_cfg_to_cpu', 'apply',
           'filter_unactionable_log_records', 'first_slurm_host', 'harden_runner_cfg',
           'init_cpu_process_group', 'install_mmcv_ext_standin', 'is_trusted_checkpoint',
           'register_checkpoint_loader', 'shutdown_process_group',
           'silence_unactionable_warnings', 'trust_checkpoint', '_export_mpi_env',
           '_export_slurm_env']

_applied = False


def apply() -> None:
    """The fixes importing this package applies (before mmseg is imported); idempotent."""
    global _applied
    if _applied:
        return
    silence_unactionable_warnings()
    filter_unactionable_log_records()
    install_mmcv_ext_standin()
    register_checkpoint_loader()
    _applied = True


apply()
