"""mmcv-lite has no compiled ops, but mmseg imports ``mmcv.ops`` unconditionally."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from typing import Any


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
