"""Reading checkpoint files: one function, one trust rule.

Every checkpoint mmvolo reads (converter sources, ``init_cfg=dict(type='Pretrained')``,
``load_from``, ``--resume``, test and inference checkpoints) goes through
:func:`load_checkpoint_file`:

- an ``http(s)://`` URL is first downloaded once into torch.hub's cache
  (:mod:`mmvolo.download`), then read as the local file below, under the same rules;
- ``.safetensors`` files through safetensors (no code can run);
- everything else through ``torch.load(weights_only=True)``, with exactly the extra classes
  that mmengine's Runner writes into its own checkpoints allowed (:data:`RUNNER_SAFE_GLOBALS`:
  its message hub's ``HistoryBuffer``, numpy arrays, dtypes and scalars), so training state
  resumes without trusting the file;
- full unpickling (which runs whatever code the file carries) only with ``trust=True``, which
  warns naming the file. Trust is never inferred from a path, a folder or a marker file.

Files that are not checkpoints (text, random bytes, truncated archives) raise
:class:`CheckpointError` with one line naming the file and what it looks like.
"""
from __future__ import annotations

import inspect
import os
import pickle
import re
import warnings
import zipfile
from typing import Any, Callable

import torch

from .utils.errors import first_line

#: HistoryBuffer's built-in statistics (what a message hub pickles by name).
DEFAULT_STATISTICS = ('min', 'max', 'mean', 'current')
#: First bytes of the formats ``torch.load`` and safetensors read.
ZIP_MAGIC = b'PK\x03\x04'
#: ``torch.save`` before torch 1.6 (legacy): a pickle stream, protocol 2+ opcode first.
PICKLE_PROTO_OPCODE = b'\x80'


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why and what to do."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint that needs pickled code beyond tensors and training state to load."""

    def __init__(self, path: str, needs: str) -> None:
        self.path = path
        self.needs = needs
        super().__init__(
            f'{path} needs pickled code to load ({needs}); refusing to run it. Load it with '
            'trust=True only if you trust its source.')


class TrustedLoadWarning(UserWarning):
    """A checkpoint was unpickled with full trust (its pickled code ran)."""


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = 'cpu',
                         trust: bool = False) -> Any:
    """Load a checkpoint without running code it carries, unless ``trust=True``.

    Args:
        path: a ``.pth``/``.pth.tar``/``.bin`` file (torch.save, zip or legacy format) or a
            ``.safetensors`` file, or an ``http(s)://`` URL of one (downloaded once into
            ``<torch.hub.get_dir()>/checkpoints/``, see :mod:`mmvolo.download`).
        map_location: as for ``torch.load``.
        trust: unpickle with full trust (the file's code runs); warns naming the file.

    Raises:
        CheckpointError: missing file, not a checkpoint, truncated or corrupt (one line);
            :class:`mmvolo.download.DownloadError` for a URL that cannot be fetched.
        UntrustedCheckpointError: the file needs code beyond tensors and mmengine's training
            state, and ``trust`` is False.
    """
    from .download import resolve_checkpoint_path  # it imports this module

    path = resolve_checkpoint_path(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    if path.endswith('.safetensors'):
        return _read_safetensors(path)
    _require_torch_format(path)
    if trust:
        warnings.warn(f'unpickling {path} with full trust: code inside it runs',
                      TrustedLoadWarning, stacklevel=2)
        return _torch_load(path, map_location, weights_only=False)
    with torch.serialization.safe_globals(RUNNER_SAFE_GLOBALS):
        return _torch_load(path, map_location, weights_only=True)


def _torch_load(path: str, map_location: Any, weights_only: bool) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as error:
        needs = _unsupported_global(error)
        if weights_only and needs:
            raise UntrustedCheckpointError(path, needs) from None
        raise CheckpointError(f'{path} is truncated or corrupt (invalid pickle data: '
                              f'{_unpickler_detail(error)})') from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError, KeyError,
            IndexError, TypeError, AttributeError) as error:
        raise corrupt_checkpoint(path, error) from None


#: How torch's weights-only unpickler names what it refused (the global or call).
_REFUSED_PATTERNS = (
    r'Unsupported global: (GLOBAL \S+)',
    r'unsupported (GLOBAL \S+)',
    r'(GLOBAL builtins\.getattr\(\S+\))',
    r'unrecognized function (\S+)',
    r'(Unsupported class \S+)',
)


def _unsupported_global(error: BaseException) -> str | None:
    """What torch's weights-only unpickler refused to import or call, e.g.
    'GLOBAL posix.system'; None when the stream is simply not a valid pickle (corrupt)."""
    message = str(error)
    if 'weights_only' not in message and 'Weights only' not in message:
        return None
    for pattern in _REFUSED_PATTERNS:
        found = re.search(pattern, message)
        if found:
            return found.group(1).rstrip('.,')
    return None  # e.g. "Unsupported operand 50": bytes that are no valid pickle


def _unpickler_detail(error: BaseException) -> str:
    """The unpickler's own reason, without torch's advice to retry with weights_only=False."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.startswith('WeightsUnpickler error') and index + 1 < len(lines):
            return (line.split(':', 1)[1].strip() or lines[index + 1])[:200]
    useful = [line for line in lines if 'weights_only' not in line and 'Weights only' not in line]
    return (useful[0] if useful else lines[-1] if lines else type(error).__name__)[:200]


def _require_torch_format(path: str) -> None:
    """Refuse files that are neither a zip archive nor a pickle stream, naming what they are."""
    with open(path, 'rb') as stream:
        head = stream.read(64)
    if head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_PROTO_OPCODE):
        return
    raise CheckpointError(f'{path} is not a checkpoint ({_describe_bytes(head)}); expected a '
                          'file written by torch.save or a .safetensors file')


def _describe_bytes(head: bytes) -> str:
    if not head:
        return 'the file is empty'
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError:
        text = None
    if text is None or not all(char.isprintable() or char.isspace() for char in text):
        return f'unknown binary data starting {head[:8].hex(" ")}'
    if text.lstrip().startswith('{'):
        return 'it looks like JSON text'
    return 'it looks like text'


def corrupt_checkpoint(path: str, error: BaseException) -> CheckpointError:
    """The one-line error for a checkpoint that fails part-way through reading."""
    return CheckpointError(f'{path} is truncated or corrupt ({first_line(error)})')


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f'{path} is a .safetensors file; `pip install safetensors` to '
                              'read it') from None
    try:
        return load_file(path, device='cpu')
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise corrupt_checkpoint(path, error) from None


# ------------------------------------------------------------------------------------------
# What mmengine's Runner writes into its checkpoints, and nothing more
# ------------------------------------------------------------------------------------------
def _history_buffer_getattr(owner: Any, name: str) -> Any:
    """``getattr`` as pickle protocol 2 uses it for ``HistoryBuffer.min`` and friends.

    A Runner checkpoint pickles its message hub's statistics methods as
    ``getattr(HistoryBuffer, 'min')``. Only that lookup is allowed: one of HistoryBuffer's
    statistics methods, looked up on the class itself. Anything else (the road to
    ``__globals__`` and ``eval``) is refused.
    """
    from mmengine.logging import HistoryBuffer

    allowed = set(HistoryBuffer._statistics_methods) | set(DEFAULT_STATISTICS)
    value = vars(HistoryBuffer).get(name) if owner is HistoryBuffer else None
    if name not in allowed or not inspect.isfunction(value):
        owner_name = getattr(owner, '__qualname__', type(owner).__qualname__)
        raise pickle.UnpicklingError(
            f'Weights only load failed: GLOBAL builtins.getattr({owner_name}.{name})')
    return value


def _runner_safe_globals() -> list[Callable | tuple[Callable, str]]:
    import numpy as np
    from mmengine.logging import HistoryBuffer

    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    dtype_classes = [value for value in vars(np.dtypes).values()
                     if isinstance(value, type) and issubclass(value, np.dtype)]
    # numpy 1.x wrote 'numpy.core.multiarray.*', numpy 2.x writes 'numpy._core.multiarray.*'
    array_rebuilders = [(function, f'{module}.multiarray.{function.__name__}')
                        for function in (multiarray._reconstruct, multiarray.scalar)
                        for module in ('numpy.core', 'numpy._core')]
    return [
        HistoryBuffer,
        (_history_buffer_getattr, 'builtins.getattr'),
        (_history_buffer_getattr, '__builtin__.getattr'),
        *array_rebuilders,
        np.ndarray,
        np.dtype,
        *dtype_classes,
    ]


#: Globals allowed in a ``weights_only`` load besides torch's own: exactly what mmengine
#: 0.10's Runner checkpoints hold (message hub history buffers, numpy arrays and scalars).
RUNNER_SAFE_GLOBALS = _runner_safe_globals()
