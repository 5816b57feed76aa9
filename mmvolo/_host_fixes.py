"""The host hook's two fixes (:mod:`mmvolo._host_hook` says when and why they run).

Loaded by path as ``_mmvolo_host_fixes`` the first time a process imports ``mmcv._ext`` or
``mmengine.config.utils`` with the hook enabled; stdlib only.
"""
from __future__ import annotations

import sys

#: Distributions that import ``mmcv.ops`` unguarded (as mmvolo.runtime.mmcv_ext says).
UNGUARDED_MMCV_OPS_USERS = ('mmsegmentation', 'mmdet', 'onedl-mmdetection')
#: The fixes the hook applied in this process: name -> why.
APPLIED: dict[str, str] = {}
#: The environment variable and finder class name of :mod:`mmvolo._host_hook` (tested equal).
ENV_VAR = 'MMVOLO_HOST_HOOK'
FINDER = 'MmvoloHostHook'


class _MissingOp:
    """A compiled mmcv op that is not there: importable, fails with the fix when called."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(f"mmcv op '{self.name}' needs compiled mmcv ops, which this "
                           'environment lacks; install full mmcv 2.1 built against your torch '
                           '(upstream) or onedl-mmcv with its ops (onedl): python -m mmvolo.env '
                           'names the stack')


class _StandinLoader:
    """Creates the ``mmcv._ext`` stand-in; afterwards its spec has no loader, so
    mmengine's ``mmcv_full_available()`` keeps saying that full mmcv is absent."""

    def create_module(self, spec: object) -> object:
        import types

        module = types.ModuleType(spec.name)
        module.__doc__ = ('mmvolo stand-in for mmcv-lite (host hook): every op raises a clear '
                          'error when called.')

        def __getattr__(name: str) -> _MissingOp:
            if name.startswith('__'):
                raise AttributeError(name)
            return _MissingOp(name)

        module.__getattr__ = __getattr__
        return module

    def exec_module(self, module: object) -> None:
        import importlib.machinery

        module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, loader=None)
        module.__loader__ = None
        APPLIED['mmcv-ext-standin'] = ("mmcv has no compiled ops and a package that imports "
                                       "mmcv.ops unguarded is installed")


class _ThenFix:
    """A loader that runs the real loader, then ``fix(module)``; everything else of the
    real loader (get_source for tracebacks, ...) is passed through."""

    def __init__(self, loader: object, fix) -> None:
        self.loader = loader
        self.fix = fix

    def __getattr__(self, name: str) -> object:
        return getattr(self.loader, name)

    def create_module(self, spec: object) -> object:
        return self.loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        self.loader.exec_module(module)
        try:
            self.fix(module)
        except Exception as error:  # noqa: BLE001 - a fix must never break the host's import
            print(f'mmvolo host hook: {self.fix.__name__} failed ({error}); disable the hook '
                  f'with {ENV_VAR}=0', file=sys.stderr)


def _installed(distribution: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def map_mmseg_scope(utils: object) -> None:
    """Point onedl-mmengine's ``MODULE2PACKAGE['mmseg']`` at onedl-mmsegmentation.

    mmengine resolves ``'mmseg::_base_/...'`` through this table, which names the upstream
    distribution ``mmsegmentation``; on the onedl stack that is not installed, so every config
    with an ``mmseg::`` base fails to parse before any plugin code can run. Changed only when
    ``mmsegmentation`` is absent and ``onedl-mmsegmentation`` is installed (the same rule as
    :func:`mmvolo.runtime.map_mmseg_config_scope`, which finds nothing left to do after it).
    """
    table = getattr(utils, 'MODULE2PACKAGE', None)
    if not isinstance(table, dict) or table.get('mmseg') != 'mmsegmentation':
        return
    if _installed('mmsegmentation') or not _installed('onedl-mmsegmentation'):
        return
    table['mmseg'] = 'onedl-mmsegmentation'
    APPLIED['mmseg-config-scope'] = ("mmengine maps 'mmseg::' to the distribution "
                                     "'mmsegmentation', which this stack does not have")


def _importing() -> bool:
    """True when the finder is asked by an import, False for a probe such as
    ``importlib.util.find_spec`` or pkgutil's (importlib calls finders from ``_find_spec``;
    an import reaches that from ``_find_and_load_unlocked``, a probe from elsewhere)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_name != '_find_spec':
        frame = frame.f_back
    return (frame is not None and frame.f_back is not None
            and frame.f_back.f_code.co_name == '_find_and_load_unlocked')


def find_spec(name: str, path: object = None, target: object = None) -> object:
    """The hook finder's answer for a watched module name (None: not ours to change)."""
    if name == 'mmcv._ext':
        return _mmcv_ext_spec(name, path, target)
    spec = _elsewhere(name, path, target)
    if name == 'mmengine.config.utils' and spec is not None and spec.loader is not None:
        spec.loader = _ThenFix(spec.loader, map_mmseg_scope)
    return spec


def _elsewhere(name: str, path: object, target: object) -> object:
    """The spec the other finders give ``name`` (None if none has it)."""
    for finder in sys.meta_path:
        find = getattr(finder, 'find_spec', None)
        if type(finder).__name__ == FINDER or find is None:
            continue
        spec = find(name, path, target)
        if spec is not None:
            return spec
    return None


def _mmcv_ext_spec(name: str, path: object, target: object) -> object:
    """The stand-in's spec for an import of a missing ``mmcv._ext`` (None for a probe)."""
    if not _importing():
        return None  # a probe: the other finders tell the truth
    spec = _elsewhere(name, path, target)
    if spec is not None:
        return spec  # compiled ops are installed
    if not any(map(_installed, UNGUARDED_MMCV_OPS_USERS)):
        return None
    import importlib.machinery

    return importlib.machinery.ModuleSpec(name, _StandinLoader())
