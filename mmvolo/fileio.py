"""Writing files atomically: a reader sees the old file or the whole new one, never a part.

:func:`atomic_path` is the one place mmvolo writes an output file: the converter's weights,
the Runner's checkpoints (through :class:`AtomicLocalBackend`, which
:class:`mmvolo.engine.AtomicCheckpointHook` selects) and the ``last_checkpoint`` marker. The
data goes to a temporary file in the destination's folder, is flushed and fsynced, gets the
mode the user's umask gives new files, and is renamed onto the destination; the folder is
fsynced so the rename survives a power cut. If anything fails or the process is interrupted
(Ctrl-C, or SIGTERM where the tool turns it into an exception), the temporary file is removed
and an existing destination is left untouched. Only SIGKILL or a power cut can leave a
``.<name>.*.tmp`` file behind; it is never mistaken for a checkpoint.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mmengine.fileio import LocalBackend, register_backend

#: Suffix of temporary files (checkpoint finders look for ``*.pth``: this never matches).
TMP_SUFFIX = '.tmp'
#: The file backend name for ``backend_args=dict(backend=ATOMIC_BACKEND)``.
ATOMIC_BACKEND = 'mmvolo_atomic_local'


def current_umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``dst``; on success fsync it and rename it onto ``dst``.

    The temporary name is hidden and keeps ``dst``'s extension after :data:`TMP_SUFFIX`
    (``.w.pth.a1b2.tmp.pth``), so writers and readers that go by the extension still can,
    while checkpoint finders (``iter_*.pth``, ``last_checkpoint``) never pick it up.
    """
    dst = os.path.abspath(os.fspath(dst))
    folder, name = os.path.split(dst)
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f'.{name}.', suffix=TMP_SUFFIX + _extension(name),
                                   dir=folder)
    os.close(handle)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600
        os.replace(tmp, dst)
        _fsync_folder(folder)
    except OSError as error:
        if error.filename not in (None, tmp) or error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, dst) from error  # name what was written
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _extension(name: str) -> str:
    return '.safetensors' if name.endswith('.safetensors') else os.path.splitext(name)[1]


def write_bytes_atomic(data: bytes, dst: str | os.PathLike) -> None:
    """Write ``data`` to ``dst`` atomically."""
    with atomic_path(dst) as tmp:
        Path(tmp).write_bytes(data)


def write_text_atomic(text: str, dst: str | os.PathLike, encoding: str = 'utf-8') -> None:
    """Write ``text`` to ``dst`` atomically."""
    write_bytes_atomic(text.encode(encoding), dst)


def _fsync_file(path: str) -> None:
    with open(path, 'rb+') as stream:
        os.fsync(stream.fileno())


def _fsync_folder(folder: str) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename itself is still atomic
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@register_backend(ATOMIC_BACKEND)
class AtomicLocalBackend(LocalBackend):
    """mmengine's local-disk backend whose ``put``/``put_text`` write atomically.

    mmengine's ``LocalBackend.put`` opens the destination with 'wb' and writes into it: a full
    disk or a killed save leaves a half-written checkpoint under the final name.
    """

    def put(self, obj: bytes, filepath: str | Path) -> None:
        write_bytes_atomic(obj, filepath)

    def put_text(self, obj: str, filepath: str | Path, encoding: str = 'utf-8') -> None:
        write_text_atomic(obj, filepath, encoding)
