"""Helpers behind mmvolo's command-line tools (``tools/train.py``, ``test.py``, ``inference.py``).

:mod:`.checks` turns bad input (wrong config, missing data, unknown arch, foreign checkpoint)
into one-line :class:`UsageError` messages that name the fix; :mod:`.launch` loads configs and
prepares the Runner for the machine it runs on.
"""
from .checks import (
                     UsageError,
                     check_arch,
                     check_checkpoint,
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

__all__ = ['UsageError', 'apply_work_dir', 'check_arch', 'check_checkpoint', 'check_data_roots',
           'check_seg_config', 'enable_amp', 'is_main_process', 'load_config', 'parse_tool_args',
           'prepare_device',
           'run_tool', 'set_local_rank']
