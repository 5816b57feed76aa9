"""What the OpenMMLab stack gets wrong on today's torch, fixed once, here, explicitly.

``import mmvolo`` only registers modules. The host stack changes only where this module is
imported: mmvolo's tools import it, and mmvolo's configs list it in ``custom_imports``::

    custom_imports = dict(imports=['mmvolo.runtime', 'mmvolo'], allow_failed_imports=False)

so mmseg's own ``tools/train.py`` and ``mim train mmseg`` get the same fixes. Importing it
applies :func:`apply` (once); the distributed and config fixes are functions the tools call.
Each fix is one function with its reason in its docstring and a test in
``tests/test_runtime.py``. :func:`apply` installs, where the installed stack needs them (each
checks; :data:`ACTIVE_FIXES` and ``python -m mmvolo.env`` say which ran):

1. ``quiet-warnings`` / ``quiet-log-records`` (:func:`silence_unactionable_warnings`,
   :func:`filter_unactionable_log_records`): noise nobody can act on.
2. ``mmcv-ext-standin`` (:func:`install_mmcv_ext_standin`): mmcv-lite has no compiled ops;
   mmseg 1.2 imports them unguarded.
3. ``torchvision-mmcv-ops``: with that stand-in, ``nms`` / ``roi_align`` for detection from
   torchvision.
4. ``mmseg-config-scope`` (:func:`map_mmseg_config_scope`): onedl's ``mmseg::`` bases.
5. ``config-index-cache`` (:func:`cache_model_index`): ``pkg::`` bases without re-reading the
   model index.
6. ``quiet-onedl-notice``: onedl-mmsegmentation's "Could not import OneDL" prints.
7. ``weights-only-checkpoint-loader`` (:func:`register_checkpoint_loader`): mmengine's loading
   through mmvolo's one loader and trust rule, local files and URLs.

The tools call the rest: :func:`init_cpu_process_group`, :func:`adapt_cfg_to_cpu`,
:func:`shutdown_process_group` (distributed training without CUDA) and
:func:`harden_runner_cfg` (atomic checkpoints and exact resume for any config).

One submodule per fix family; this package re-exports them.
"""
from __future__ import annotations

from typing import Callable

from .checkpoint_loader import is_trusted_checkpoint, register_checkpoint_loader, trust_checkpoint
from .config_index import cache_model_index
from .config_scope import map_mmseg_config_scope
from .distributed import (
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
    import_mmseg_datasets_quietly,
    silence_unactionable_warnings,
)

__all__ = ['UNACTIONABLE_LOG_MESSAGES', 'adapt_cfg_to_cpu', 'apply', 'cache_model_index',
           'filter_unactionable_log_records', 'first_slurm_host', 'harden_runner_cfg',
           'init_cpu_process_group', 'install_mmcv_ext_standin', 'is_trusted_checkpoint',
           'ACTIVE_FIXES', 'map_mmseg_config_scope',
           'register_checkpoint_loader', 'shutdown_process_group',
           'silence_unactionable_warnings', 'trust_checkpoint']

#: The import-time fixes in force in this process: name -> why this stack needs it.
ACTIVE_FIXES: dict[str, str] = {}
_applied = False


def _activate(name: str, reason: str, fix: Callable[[], bool | None]) -> bool:
    applied = fix() is not False  # a fix returns False when its stack does not need it
    if applied:
        ACTIVE_FIXES[name] = reason
    return applied


def _install_torchvision_ops() -> bool:
    from .mmcv_ops import install_torchvision_ops
    return bool(install_torchvision_ops())


def apply() -> None:
    """The fixes importing this package applies (before mmseg is imported); idempotent.

    Each fix checks whether the installed stack needs it; :data:`ACTIVE_FIXES` records the
    ones applied and why (``python -m mmvolo.env`` prints them).
    """
    global _applied
    if _applied:
        return
    _activate('quiet-warnings', 'warnings nobody can act on (pkg_resources, deprecations '
              "raised inside mmseg's own code)", silence_unactionable_warnings)
    _activate('quiet-log-records', "mmengine's FileClient/metric-prefix log records",
              filter_unactionable_log_records)
    if _activate('mmcv-ext-standin', 'mmcv has no compiled ops and mmsegmentation 1.2 / '
                 'mmdet import mmcv.ops unguarded', install_mmcv_ext_standin):
        _activate('torchvision-mmcv-ops', 'no compiled mmcv ops: nms and roi_align for '
                  'detection come from torchvision', _install_torchvision_ops)
    _activate('mmseg-config-scope', "mmengine maps 'mmseg::' to the distribution "
              "'mmsegmentation', which this stack does not have", map_mmseg_config_scope)
    _activate('config-index-cache', "mmengine re-reads a package's whole model index (53 "
              "YAML files for mmseg) for every 'pkg::' config base", cache_model_index)
    _activate('quiet-onedl-notice', 'onedl-mmsegmentation prints "Could not import OneDL" '
              'twice without the optional onedl package', import_mmseg_datasets_quietly)
    _activate('weights-only-checkpoint-loader', "mmengine's local checkpoint loader unpickles "
              'with trust (onedl) or cannot resume its own checkpoints (torch >= 2.6)',
              register_checkpoint_loader)
    _applied = True

apply()
