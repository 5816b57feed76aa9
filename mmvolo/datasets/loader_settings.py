"""Dataloader settings that mmengine/PyTorch reject late or with a traceback, fixed or
refused before the Runner is built.

- ``num_workers=0`` with ``persistent_workers=True`` (mmseg's dataset bases set it): PyTorch's
  DataLoader raises "persistent_workers option needs num_workers > 0". Persistent workers mean
  nothing without workers, so :func:`fit_persistent_workers` makes the flag follow
  ``num_workers`` (what mmseg users expect ``num_workers=0`` to do: load in the main process).
- ``batch_size`` below 1 or not an integer, negative ``num_workers``: no meaning to fix, so
  :func:`dataloader_problems` names them (one line each).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: The dataloaders of each kind of run.
DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def dataloader_problems(cfg: Any, keys: Sequence[str] = DATALOADERS) -> list[str]:
    """One line per unusable ``batch_size`` / ``num_workers`` among ``cfg[key]``."""
    problems = []
    for key in keys:
        loader = cfg.get(key)
        if not isinstance(loader, dict):
            continue
        batch_size = loader.get('batch_size', 1)
        if not _is_int(batch_size) or batch_size < 1:
            problems.append(f'{key}.batch_size={batch_size!r}: must be a whole number >= 1 '
                            '(images per process), e.g. --cfg-options '
                            f'{key}.batch_size=2')
        workers = loader.get('num_workers', 0)
        if not _is_int(workers) or workers < 0:
            problems.append(f'{key}.num_workers={workers!r}: must be a whole number >= 0 '
                            '(0 loads in the main process), e.g. --cfg-options '
                            f'{key}.num_workers=2')
    return problems


def fit_persistent_workers(cfg: Any, keys: Sequence[str] = DATALOADERS) -> list[str]:
    """Set ``persistent_workers=False`` where ``num_workers`` is 0; returns the keys changed."""
    changed = []
    for key in keys:
        loader = cfg.get(key)
        if (isinstance(loader, dict) and loader.get('num_workers', 0) == 0
                and loader.get('persistent_workers')):
            loader['persistent_workers'] = False
            changed.append(f'{key}.persistent_workers')
    return changed


def train_batch_size(cfg: Any) -> int | None:
    """``train_dataloader.batch_size`` (images per process), None if not set."""
    loader = cfg.get('train_dataloader')
    return loader.get('batch_size') if isinstance(loader, dict) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
