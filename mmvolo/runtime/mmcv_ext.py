"""mmcv-lite has no compiled ops, but upstream mmseg imports ``mmcv.ops`` unconditionally."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

from ..stack import active_stack, provider

#: What to install for compiled mmcv ops, per stack.
FULL_MMCV = {
    'openmmlab': 'full mmcv 2.1 with its compiled ops (pip install "mmcv>=2.1,<2.2", built '
                 'against your torch)',
    'onedl': 'onedl-mmcv built with its ops (pip install onedl-mmcv --no-build-isolation)',
}


class _MissingOp:
    """Placeholder for a compiled mmcv op: importable, fails with the fix when called."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        install = FULL_MMCV.get(active_stack() or 'openmmlab', FULL_MMCV['openmmlab'])
        raise RuntimeError(f"mmcv op '{self.name}' needs compiled mmcv ops, which this "
                           f'environment lacks; install {install}')


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


def has_compiled_mmcv_ops() -> bool:
    """True if a real ``mmcv._ext`` (compiled ops) is importable."""
    module = sys.modules.get('mmcv._ext')
    if module is not None:
        return getattr(module, '__spec__', None) is not None and module.__spec__.loader is not None
    try:
        return importlib.util.find_spec('mmcv') is not None and \
            importlib.util.find_spec('mmcv._ext') is not None
    except (ImportError, ValueError):
        return False


#: Distributions that import ``mmcv.ops`` at module level, unguarded: upstream mmseg 1.2
#: and mmdet 3.3 in many places, onedl-mmdetection 3.5 in ``base_roi_extractor.py``.
UNGUARDED_MMCV_OPS_USERS = ('mmsegmentation', 'mmdet', 'onedl-mmdetection')


def needs_mmcv_ext_standin() -> bool:
    """No compiled ops, and a package that imports ``mmcv.ops`` unguarded is installed."""
    users = [provider(module) for module in ('mmseg', 'mmdet')]
    return (any(user is not None and user.distribution in UNGUARDED_MMCV_OPS_USERS
                for user in users)
            and provider('mmcv') is not None and not has_compiled_mmcv_ops())


def install_mmcv_ext_standin() -> bool:
    """Make ``import mmseg.models`` work with mmcv-lite.

    mmcv-lite ships no ``mmcv._ext``, yet mmseg 1.2.x imports ``mmcv.ops`` at module level
    (``mmseg/utils/mask_classification.py`` and others), which loads ``mmcv._ext`` and checks
    that each op exists. Registers a stand-in module whose ops exist but raise a RuntimeError
    naming the fix for the active stack when called. Does nothing when real compiled ops are
    installed (:func:`needs_mmcv_ext_standin` decides; onedl-mmsegmentation guards its
    ``mmcv.ops`` imports itself).

    Returns:
        True if the stand-in was installed.
    """
    if 'mmcv._ext' in sys.modules or not needs_mmcv_ext_standin():
        return False
    sys.modules['mmcv._ext'] = _make_mmcv_ext_standin()
    return True
