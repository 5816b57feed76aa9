"""mmengine's CheckpointHook, with every file it writes appearing whole or not at all."""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from ..fileio import ATOMIC_BACKEND, write_text_atomic

#: mmengine's marker naming the newest checkpoint of a work dir (what auto-resume reads).
LAST_CHECKPOINT_MARKER = 'last_checkpoint'


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose ``iter_N.pth``, ``best_*.pth`` and ``last_checkpoint`` are
    written to a temporary file, fsynced and renamed into place.

    mmengine writes checkpoints straight into their final name: a full disk or a killed save
    leaves a half-written ``iter_N.pth`` (and a ``last_checkpoint`` pointing at it) that the
    next ``--resume`` fails on. Here checkpoints go through
    :class:`mmvolo.fileio.AtomicLocalBackend` (local folders; a ``backend_args`` naming
    another backend is kept as given) and the marker is written atomically after its
    checkpoint is in place. Arguments are those of ``CheckpointHook``.
    """

    def __init__(self, *args: Any, backend_args: dict | None = None, **kwargs: Any) -> None:
        if backend_args is None or backend_args.get('backend', 'local') == 'local':
            backend_args = dict(backend_args or {}, backend=ATOMIC_BACKEND)
        super().__init__(*args, backend_args=backend_args, **kwargs)

    def _save_checkpoint_with_step(self, runner: Any, step: int, meta: dict) -> None:
        """mmengine's save, with its plain ``open(work_dir/last_checkpoint, 'w')`` redirected
        into a private folder and then moved into the work dir atomically."""
        scratch = tempfile.mkdtemp(prefix='.last_checkpoint.', dir=runner.work_dir)
        try:
            super()._save_checkpoint_with_step(_WorkDirRedirect(runner, scratch), step, meta)
            written = os.path.join(scratch, LAST_CHECKPOINT_MARKER)
            if os.path.isfile(written):  # only the main process writes the marker
                with open(written, encoding='utf-8') as stream:
                    marker = stream.read()
                write_text_atomic(marker, os.path.join(runner.work_dir, LAST_CHECKPOINT_MARKER))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


class _WorkDirRedirect:
    """The runner, except that ``work_dir`` names another folder (read-only view)."""

    def __init__(self, runner: Any, work_dir: str) -> None:
        self._runner = runner
        self.work_dir = work_dir

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)
