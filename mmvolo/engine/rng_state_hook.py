"""Exact resume: every random-number stream continues where the checkpoint left it."""
from __future__ import annotations

import functools
import random
from typing import Any

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

#: Key of the RNG states in a checkpoint.
RNG_STATE_KEY = 'rng_state'


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG state of this process: python, numpy, torch CPU and each CUDA device.

    Returns plain values (tuples, ints, numpy arrays and uint8 tensors), which mmvolo's
    weights-only checkpoint loader reads without trusting the file.
    """
    state: dict[str, Any] = dict(python=random.getstate(), numpy=np.random.get_state(),
                                 torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], host_streams: bool = True) -> None:
    """Set the RNG states :func:`capture_rng_state` returned.

    Args:
        state: what :func:`capture_rng_state` returned.
        host_streams: also restore python's and numpy's streams (leave them alone when the
            data pipeline draws from them in this process, see :class:`RNGStateHook`).
    """
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state['cuda']]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    if host_streams:
        random.setstate(_as_python_state(state['python']))
        np.random.set_state(state['numpy'])


def _as_python_state(state: Any) -> tuple:
    """``random.setstate`` needs tuples; a checkpoint round trip may hand back lists."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Save all RNG states with each checkpoint; restore them when training resumes from it.

    mmengine re-seeds on resume and replays the data loader up to the checkpoint's iteration,
    which puts the data back where it was, but the model's random streams (dropout, drop
    path) restart from the seed: a resumed run then trains on different masks than an
    uninterrupted one. This hook makes them equal:

    - ``before_save_checkpoint``: stores python, numpy, torch CPU and CUDA states.
    - validation inside training draws nothing from the training streams: states are taken
      before it and put back after it (so saving and validating at the same iteration, in
      either order, does not matter).
    - on resume, the saved states are set right before the first resumed iteration, after
      mmengine's replay of the data loader. Python's and numpy's streams are restored only
      when data loads in worker processes; with ``num_workers=0`` the replay itself has
      already brought those streams (which the transforms use) to the saved point.

    With several processes, rank 0's states are saved; ranks start equal under mmengine's
    default ``randomness.diff_rank_seed=False``, so every rank continues exactly too.

    Args:
        replay_data: onedl-mmengine resumes by fast-forwarding the sampler without loading
            the skipped batches, so the random augmentation streams (in the workers, or in
            this process) restart from the seed instead of where they were. True (default)
            makes it replay them as upstream mmengine does (exact; a resume then costs the
            data loading of the skipped iterations); False keeps onedl's fast resume.
    """

    priority = 'VERY_HIGH'

    def __init__(self, replay_data: bool = True) -> None:
        self.replay_data = replay_data
        self._resumed: dict[str, Any] | None = None
        self._resumed_iter: int | None = None
        self._before_val: dict[str, Any] | None = None

    def before_train(self, runner: Any) -> None:
        iterator = getattr(runner.train_loop, 'dataloader_iterator', None)
        if self.replay_data and callable(getattr(iterator, 'skip_iter', None)):
            iterator.skip_iter = functools.partial(_replay_batches, iterator)

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        # a best-score checkpoint is saved during validation: keep the states from before it
        checkpoint[RNG_STATE_KEY] = self._before_val or capture_rng_state()

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        self._resumed = checkpoint.get(RNG_STATE_KEY)
        self._resumed_iter = checkpoint.get('meta', {}).get('iter')

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        if self._resumed is None:
            return
        if runner.iter == self._resumed_iter:  # resumed, not load_from (which starts at 0)
            restore_rng_state(self._resumed, host_streams=_loads_in_workers(runner))
        self._resumed = None

    def before_val(self, runner: Any) -> None:
        self._before_val = capture_rng_state()

    def after_val(self, runner: Any) -> None:
        if self._before_val is not None:
            restore_rng_state(self._before_val)
            self._before_val = None


def _replay_batches(iterator: Any, num_iters: int) -> None:
    """Skip ``num_iters`` batches by loading them, as upstream mmengine's resume does."""
    for _ in range(num_iters):
        next(iterator)


def _loads_in_workers(runner: Any) -> bool:
    dataloader = getattr(runner.train_loop, 'dataloader', None)
    return getattr(dataloader, 'num_workers', 0) > 0
