"""VOLO variants D1-D5 (official settings) and validation of custom architectures."""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

#: Official settings. Four block groups: outlookers (stride 8), then three groups of
#: self-attention blocks after a 2x2 downsample (stride 16).
ARCH_ZOO: dict[str, dict[str, Any]] = {
    'd1': dict(layers=(4, 4, 8, 2), embed_dims=(192, 384, 384, 384),
               num_heads=(6, 12, 12, 12), mlp_ratio=3., stem_hidden_dims=64),
    'd2': dict(layers=(6, 4, 10, 4), embed_dims=(256, 512, 512, 512),
               num_heads=(8, 16, 16, 16), mlp_ratio=3., stem_hidden_dims=64),
    'd3': dict(layers=(8, 8, 16, 4), embed_dims=(256, 512, 512, 512),
               num_heads=(8, 16, 16, 16), mlp_ratio=3., stem_hidden_dims=64),
    'd4': dict(layers=(8, 8, 16, 4), embed_dims=(384, 768, 768, 768),
               num_heads=(12, 16, 16, 16), mlp_ratio=3., stem_hidden_dims=64),
    'd5': dict(layers=(12, 12, 20, 4), embed_dims=(384, 768, 768, 768),
               num_heads=(12, 16, 16, 16), mlp_ratio=4., stem_hidden_dims=128),
}

#: A VOLO of D1's structure small enough for CPU tests and dry runs (one block per group).
TINY_ARCH: dict[str, Any] = dict(layers=(1, 1, 1, 1), embed_dims=(16, 32, 32, 32),
                                 num_heads=(2, 2, 2, 2), stem_hidden_dims=8)

_REQUIRED_KEYS = ('layers', 'embed_dims', 'num_heads')
_DEFAULTS = dict(mlp_ratio=3., stem_hidden_dims=64)


def resolve_arch(arch: str | dict) -> dict[str, Any]:
    """Settings for ``arch``: a name in :data:`ARCH_ZOO` (case-insensitive, 'volo_d1' or
    'd1') or a dict with ``layers``, ``embed_dims``, ``num_heads`` (4 entries each) and
    optionally ``mlp_ratio``, ``stem_hidden_dims``. Every field is checked: ``layers``,
    ``embed_dims``, ``num_heads`` 4 positive ints each, ``embed_dims[1:]`` equal and divisible
    by their heads, ``stem_hidden_dims`` a positive int, ``mlp_ratio`` a positive number.

    Raises:
        ValueError: unknown name (lists the valid ones) or malformed dict (one line naming
            the field); TypeError: neither a name nor a dict, or a field that is no sequence.
    """
    if isinstance(arch, str):
        name = arch.lower().removeprefix('volo_').removeprefix('volo-')
        if name not in ARCH_ZOO:
            raise ValueError(f"unknown VOLO arch '{arch}'; valid: {sorted(ARCH_ZOO)} or a dict "
                             f'with keys {list(_REQUIRED_KEYS)}')
        return dict(ARCH_ZOO[name])
    if not isinstance(arch, dict):
        raise TypeError(f'VOLO arch must be a name or a dict, got {type(arch).__name__}')
    missing = [key for key in _REQUIRED_KEYS if key not in arch]
    if missing:
        raise ValueError(f'custom VOLO arch lacks {missing}; it needs {list(_REQUIRED_KEYS)}')
    settings = {**_DEFAULTS, **arch}
    unknown = set(settings) - set(_REQUIRED_KEYS) - set(_DEFAULTS)
    if unknown:
        raise ValueError(f'custom VOLO arch has unknown keys {sorted(unknown)}')
    for key in _REQUIRED_KEYS:
        settings[key] = _four_positive_ints(key, settings[key])
    settings['mlp_ratio'] = _positive_number('mlp_ratio', settings['mlp_ratio'])
    settings['stem_hidden_dims'] = _positive_int('stem_hidden_dims',
                                                 settings['stem_hidden_dims'])
    dims = settings['embed_dims']
    if len(set(dims[1:])) != 1:
        raise ValueError(f'custom VOLO arch: embed_dims[1:] must be equal (no downsample '
                         f'after stage 1), got {dims}')
    for dim, heads in zip(dims, settings['num_heads']):
        if dim % heads:
            raise ValueError(f'custom VOLO arch: embed_dims {dim} do not divide into {heads} '
                             'heads')
    return settings


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _four_positive_ints(key: str, value: Any) -> tuple[int, ...]:
    """``layers`` / ``embed_dims`` / ``num_heads``: 4 ints >= 1, one per stage."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f'custom VOLO arch: {key} must be a sequence of 4 positive ints '
                        f'(outlooker stage + 3 transformer stages), got {value!r}')
    value = tuple(value)
    if len(value) != 4:
        raise ValueError(f'custom VOLO arch: {key} needs 4 entries (outlooker stage + 3 '
                         f'transformer stages), got {value}')
    if not all(_is_int(entry) and entry >= 1 for entry in value):
        raise ValueError(f'custom VOLO arch: {key} must be 4 positive ints (>= 1 each), got '
                         f'{value}')
    return tuple(int(entry) for entry in value)


def _positive_int(key: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f'custom VOLO arch: {key} must be a positive int, got {value!r}')
    return int(value)


def _positive_number(key: str, value: Any) -> float:
    if (not isinstance(value, numbers.Real) or isinstance(value, bool)
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f'custom VOLO arch: {key} must be a positive number, got {value!r}')
    return float(value)


def match_arch(settings: dict[str, Any]) -> str | None:
    """Name of the zoo variant whose weight-visible settings equal ``settings``, if any.

    Compares ``layers``, ``embed_dims``, ``mlp_ratio``, ``stem_hidden_dims`` and the
    outlooker heads (``num_heads[0]``); the later heads leave no trace in the weights.
    """
    def visible(entry: dict[str, Any]) -> tuple:
        return (tuple(entry['layers']), tuple(entry['embed_dims']), float(entry['mlp_ratio']),
                entry['stem_hidden_dims'], entry['num_heads'][0])

    target = visible(settings)
    matches = [name for name, entry in ARCH_ZOO.items() if visible(entry) == target]
    return matches[0] if matches else None
