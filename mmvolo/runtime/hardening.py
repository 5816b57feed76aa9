"""Checkpoints that survive interruption; resume that continues every random stream."""
from __future__ import annotations

from typing import Any


def harden_runner_cfg(cfg: Any) -> list[str]:
    """Give a Runner config atomic checkpoints and exact resume (mmvolo's configs have both).

    mmengine's ``CheckpointHook`` writes into the final file name (a full disk leaves a
    half-written ``iter_N.pth``) and its resume restarts the random streams from the seed.
    A plain ``CheckpointHook`` becomes :class:`mmvolo.engine.AtomicCheckpointHook` (same
    arguments) and :class:`mmvolo.engine.RNGStateHook` is added unless present.

    Returns:
        One short phrase per change made.
    """
    changes: list[str] = []
    hooks = cfg.setdefault('default_hooks', {})
    checkpoint = hooks.get('checkpoint')
    if isinstance(checkpoint, dict) and checkpoint.get('type') in ('CheckpointHook', None):
        checkpoint['type'] = 'AtomicCheckpointHook'
        changes.append('atomic checkpoints')
    custom_hooks = list(cfg.get('custom_hooks') or [])
    if not any(isinstance(hook, dict) and hook.get('type') == 'RNGStateHook'
               for hook in custom_hooks):
        custom_hooks.append(dict(type='RNGStateHook'))
        cfg['custom_hooks'] = custom_hooks
        changes.append('RNG states in checkpoints')
    return changes
