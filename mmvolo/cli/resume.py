"""Choosing the checkpoint a run resumes from, and refusing a damaged one with a way out.

mmengine's auto-resume reads ``work_dir/last_checkpoint`` and loads whatever it names; a
checkpoint cut short by a full disk or a kill (written before mmvolo's atomic saves) then
ends in a traceback deep inside ``torch.load``. Here the candidate is checked first (its zip
archive must be complete and every member's CRC must match, which reads the file once
without unpickling it) and a damaged one is refused in one line that names the newest intact
``iter_*.pth`` to resume from instead.
"""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

from ..checkpoint import ZIP_MAGIC
from ..engine.atomic_checkpoint_hook import LAST_CHECKPOINT_MARKER
from .checks import UsageError, read_checkpoint_for_tool

#: Checkpoints the Runner writes periodically (``iter_80.pth``, ``epoch_3.pth``).
PERIODIC_CHECKPOINT = re.compile(r'^(iter|epoch)_(\d+)\.pth$')


def checkpoint_damage(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete ``torch.save`` archive, or None if it is intact.

    Only zip archives (what ``torch.save`` writes) are checked here; anything else is left
    to :func:`mmvolo.checkpoint.load_checkpoint_file`, which says what the file is.
    """
    try:
        with open(path, 'rb') as stream:
            if stream.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
                return None
    except OSError as error:
        return f'unreadable: {error}'
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        return f'truncated or corrupt: {error}'
    if bad_member is not None:
        return f'corrupt: member {bad_member} fails its CRC check'
    return None


def periodic_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The folder's ``iter_N.pth`` / ``epoch_N.pth`` files, newest (largest N) first."""
    found = []
    for path in Path(folder).glob('*.pth'):
        match = PERIODIC_CHECKPOINT.match(path.name)
        if match:
            found.append((int(match.group(2)), path))
    return [path for _, path in sorted(found, reverse=True)]


def newest_intact(folder: str | os.PathLike, skip: Path | None = None) -> Path | None:
    """The newest periodic checkpoint in ``folder`` that passes :func:`checkpoint_damage`."""
    for path in periodic_checkpoints(folder):
        if (skip is None or path.resolve() != skip.resolve()) and not checkpoint_damage(path):
            return path
    return None


def marked_checkpoint(work_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``work_dir/last_checkpoint`` names (None without a readable marker)."""
    marker = Path(work_dir) / LAST_CHECKPOINT_MARKER
    try:
        named = marker.read_text(encoding='utf-8').strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not named:
        return None
    path = Path(named)
    return path if path.is_absolute() else Path(work_dir) / path


def resolve_resume(resume: str | None, work_dir: str | os.PathLike) -> str | None:
    """The checkpoint to resume from, checked intact; None to start afresh.

    Args:
        resume: None (no resume), 'auto' (the work dir's latest) or a checkpoint path.
        work_dir: the run's work dir.

    Raises:
        UsageError: the checkpoint is missing or damaged (the message names an intact one
            to pass to ``--resume`` where there is one).
    """
    if resume is None:
        return None
    if resume != 'auto':
        if not os.path.isfile(resume):
            raise UsageError(f'--resume checkpoint {resume} not found')
        return _require_intact(Path(resume), Path(resume).parent)
    candidate = marked_checkpoint(work_dir)
    if candidate is None or not candidate.is_file():
        periodic = periodic_checkpoints(work_dir) if Path(work_dir).is_dir() else []
        if not periodic:
            return None  # nothing to resume: mmengine starts afresh, as it does itself
        candidate = periodic[0]
    return _require_intact(candidate, Path(work_dir))


def _require_intact(path: Path, folder: Path) -> str:
    damage = checkpoint_damage(path)
    if damage is None:
        return str(path)
    fallback = newest_intact(folder, skip=path)
    way_out = (f'resume from the newest intact one with --resume {fallback}' if fallback
               else 'no intact iter_*/epoch_* checkpoint is left next to it; start afresh '
               'without --resume')
    raise UsageError(f'checkpoint {path} is {damage}; {way_out}', exit_code=1)


def checkpoint_meta(path: str, trust: bool = False) -> dict[str, Any]:
    """The ``meta`` dict of a Runner checkpoint ({} when it has none).

    Raises:
        UsageError: unreadable or untrusted file (one line).
    """
    checkpoint = read_checkpoint_for_tool(path, trust)
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    return meta if isinstance(meta, dict) else {}
