"""Deprecated package path: the tools' helpers live in :mod:`mmvolo.cli`.

``mmvolo.apis`` is where an OpenMMLab reader expects ``init_model`` / ``inference_model``
(mmseg's own ``mmseg.apis`` holds those for mmvolo's models), so the command-line helpers
moved to ``mmvolo.cli``. ``mmvolo.apis`` and its submodules (``mmvolo.apis.checks``, ...)
still import, with one DeprecationWarning. Removed in the release after next.
"""
import importlib
import sys
import warnings

from ..cli import *  # noqa: F401,F403
from ..cli import __all__  # noqa: F401

_SUBMODULES = ('arguments', 'checks', 'launch', 'load_from', 'output_paths', 'resume')
for _name in _SUBMODULES:
    globals()[_name] = sys.modules[f'{__name__}.{_name}'] = importlib.import_module(
        f'mmvolo.cli.{_name}')

warnings.warn('mmvolo.apis is deprecated; import the tools\' helpers from mmvolo.cli',
              DeprecationWarning, stacklevel=2)
