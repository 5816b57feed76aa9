"""Helpers behind mmvolo's command-line tools (``tools/train.py``, ``test.py``, ``inference.py``).

Importing this package applies :mod:`mmvolo.runtime` (the tools need the stack fixes).
:mod:`.checks` turns bad input (wrong config, missing data, unknown arch, foreign checkpoint)
into one-line :class:`UsageError` messages that name the fix; :mod:`.load_from` refuses
``load_from`` files that do not fit the backbone; :mod:`.resume` picks an intact checkpoint to
resume from; :mod:`.launch` loads configs and prepares the Runner for the machine it runs on.
"""
from .. import runtime  # noqa: F401  (the tools' explicit opt-in to the stack fixes)
from .checks import (
    UsageError,
    check_arch,
    check_checkpoint,
    check_data_files,
    check_data_roots,
    check_seg_config,
    load_config,
)
from .launch import (
    apply_work_dir,
    enable_amp,
    is_main_process,
    parse_tool_args,
    prepare_device,
    run_tool,
    set_local_rank,
)
from .load_from import check_load_from
from .resume import checkpoint_meta, resolve_resume

__all__ = ['UsageError', 'apply_work_dir', 'check_arch', 'check_checkpoint', 'check_data_files',
           'check_data_roots',
           'check_load_from', 'check_seg_config', 'checkpoint_meta', 'enable_amp',
           'is_main_process', 'load_config', 'parse_tool_args', 'prepare_device',
           'resolve_resume', 'run_tool', 'set_local_rank']
