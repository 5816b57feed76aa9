"""Configs: reading one (with overrides), building its model on CPU, editing it in place.

The one place tools, utils and tests load a config and build a model from it.
"""
from __future__ import annotations

import copy
import os
from typing import Any

from mmengine.config import Config

from .errors import first_line


class ConfigError(ValueError):
    """A config that cannot be read or merged; the message says which file and why."""


def load_config_file(path: str | os.PathLike, cfg_options: dict | None = None) -> Config:
    """Read a config file and merge ``cfg_options`` (a ``{dotted.key: value}`` dict, what
    the tools' ``--cfg-options`` parse to).

    Raises:
        ConfigError: missing file, a file mmengine cannot parse, or options that do not merge
            (one line).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f'config {path} not found')
    try:
        cfg = Config.fromfile(path)
    except Exception as error:  # noqa: BLE001 - any parse/import failure is the user's file
        raise ConfigError(f'cannot read config {path}: {first_line(error, 300)}') from None
    if cfg_options:
        try:
            cfg.merge_from_dict(cfg_options)
        except Exception as error:  # noqa: BLE001
            raise ConfigError(f'bad --cfg-options: {first_line(error, 300)}') from None
    return cfg


def build_model_for_analysis(cfg: Config | str, cfg_options: dict | None = None,
                             outlook_impl: str | None = 'reference') -> Any:
    """Build ``cfg.model`` on CPU in eval mode, for checking, counting or benchmarking.

    SyncBN becomes BN, no checkpoint is loaded (``init_cfg``/``pretrained`` dropped) and a
    VOLO backbone uses ``outlook_impl`` (default: the reference outlook attention, whose
    matmul the FLOP counter sees; None: the automatic choice).
    """
    from mmengine.registry import MODELS, init_default_scope

    if not isinstance(cfg, Config):
        cfg = load_config_file(cfg, cfg_options)
    elif cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model_cfg = copy.deepcopy(cfg.model)
    replace_norm_type(model_cfg, 'SyncBN', 'BN')
    model_cfg.pop('pretrained', None)
    backbone = model_cfg.get('backbone', {})
    backbone['init_cfg'] = None
    if backbone.get('type') == 'VOLO':
        backbone['outlook_impl'] = outlook_impl
    return MODELS.build(model_cfg).eval()


def replace_norm_type(node: Any, old: str, new: str) -> int:
    """Replace ``type=old`` by ``type=new`` in every ``norm_cfg`` below ``node``; count them."""
    count = 0
    if isinstance(node, dict):
        for key, value in node.items():
            if key == 'norm_cfg' and isinstance(value, dict) and value.get('type') == old:
                value['type'] = new
                count += 1
            else:
                count += replace_norm_type(value, old, new)
    elif isinstance(node, (list, tuple)):
        count += sum(replace_norm_type(item, old, new) for item in node)
    return count
