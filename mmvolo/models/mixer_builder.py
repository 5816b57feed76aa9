"""Build a token mixer from a config: VOLO's outlooker stage and :class:`MixerNeck` use it.

A token mixer is a registered module mapping tokens (B, H, W, C) -> (B, H, W, C) whose
constructor takes ``embed_dims`` (C): ``OutlookAttention`` (VOLO's), ``Involution``,
``LocalSelfAttention``, ``DWConvMixer``, ``DeformableOutlook``, ``DCNv3Mixer`` or any module
of the same interface.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch.nn as nn

from ..registry import MODELS
from . import outlook_attention  # noqa: F401  (registers the default mixer)

#: VOLO's own mixer, the default wherever a token mixer is chosen.
DEFAULT_TOKEN_MIXER = 'OutlookAttention'


def mixer_type(cfg: dict | None) -> str:
    """The registered type name a token-mixer config asks for (None: the default)."""
    if cfg is None:
        return DEFAULT_TOKEN_MIXER
    if not isinstance(cfg, dict) or not isinstance(cfg.get('type'), str):
        raise TypeError(f'token_mixer must be a dict with a registered type name, e.g. '
                        f"dict(type='Involution'), got {cfg!r}")
    return cfg['type']


def build_token_mixer(cfg: dict | None, embed_dims: int, **defaults: Any) -> nn.Module:
    """Build ``cfg`` (None: OutlookAttention) for ``embed_dims`` channels.

    Each of ``defaults`` (e.g. ``num_heads=6``) is passed only where the mixer's constructor
    takes an argument of that name and ``cfg`` does not set it, so one call site serves
    mixers with different arguments (Involution has ``groups``, not ``num_heads``).

    Raises:
        TypeError: ``cfg`` is not a dict with a type name.
        KeyError: the type is not registered (one line, naming the known mixers).
    """
    name = mixer_type(cfg)
    module_class = MODELS.get(name)
    if module_class is None:
        raise KeyError(f'token_mixer type {name!r} is not registered; use one of '
                       f'{", ".join(registered_mixers())} (or register your own module)')
    accepted = _constructor_arguments(module_class)
    built = dict(cfg or {}, type=name, embed_dims=embed_dims)
    for key, value in defaults.items():
        if key in accepted and key not in built:
            built[key] = value
    return MODELS.build(built)


def registered_mixers() -> list[str]:
    """The token mixers mmvolo ships that are registered in this process."""
    known = ('OutlookAttention', 'Involution', 'LocalSelfAttention', 'DWConvMixer',
             'DeformableOutlook', 'DCNv3Mixer')
    return [name for name in known if MODELS.get(name) is not None]


def _constructor_arguments(module_class: type) -> set[str]:
    parameters = inspect.signature(module_class.__init__).parameters.values()
    return {parameter.name for parameter in parameters
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)}
