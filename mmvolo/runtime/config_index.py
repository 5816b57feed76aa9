"""mmengine re-reads a package's whole model index for every ``pkg::`` config base.

Resolving ``'mmseg::_base_/models/upernet_swin.py'``, mmengine's
``config.utils._get_cfg_metainfo`` first parses the package's ``.mim/model-index.yml`` and
every metafile it imports to look the name up as a model config; a base is not one, so the
lookup fails and mmengine falls back to the plain path. :func:`cache_model_index` reads each
package's index once per process and answers the same lookups from it (what it costs
otherwise: docs/performance.md, "Config loading").
"""
from __future__ import annotations

import os.path as osp
import warnings

#: {package path: {config name: its metafile entry}}, built once per package and process.
_INDEXES: dict[str, dict[str, dict]] = {}
#: mmengine's own lookup, kept when :func:`cache_model_index` replaces it (tests compare).
mmengine_cfg_metainfo = None


def _model_index(package_path: str) -> dict[str, dict]:
    """Every config of the package's model index -> its metafile entry (the first one, as
    mmengine picks it), read once."""
    if package_path in _INDEXES:
        return _INDEXES[package_path]
    from mmengine.fileio import load

    index: dict[str, dict] = {}
    for meta_path in load(osp.join(package_path, '.mim', 'model-index.yml'))['Import']:
        for model_cfg in load(osp.join(package_path, '.mim', meta_path))['Models']:
            if 'Config' not in model_cfg:
                warnings.warn(f'{meta_path}: a model without `Config`: {model_cfg}', stacklevel=2)
                continue
            index.setdefault(model_cfg['Config'].partition('/')[-1], model_cfg)
    _INDEXES[package_path] = index
    return index


def cached_cfg_metainfo(package_path: str, cfg_path: str) -> dict:
    """``mmengine.config.utils._get_cfg_metainfo`` with the index read once: the same
    entry, or the same ValueError (which makes mmengine fall back to a base config)."""
    index = _model_index(package_path)
    if cfg_path not in index:
        raise ValueError(f'Expected configs: {index.keys()}, but got {cfg_path}')
    return dict(index[cfg_path])


def cache_model_index() -> bool:
    """Route mmengine's metafile lookup through :func:`cached_cfg_metainfo`.

    Returns:
        False when this mmengine has no such lookup (nothing to fix).
    """
    global mmengine_cfg_metainfo
    from mmengine.config import utils

    current = getattr(utils, '_get_cfg_metainfo', None)
    if current is None:
        return False
    if current is not cached_cfg_metainfo:
        mmengine_cfg_metainfo = current
        utils._get_cfg_metainfo = cached_cfg_metainfo
    return True
