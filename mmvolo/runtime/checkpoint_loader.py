"""torch >= 2.6 loads with ``weights_only=True``; mmengine's own checkpoints need more."""
from __future__ import annotations

import os
from typing import Any

_trusted_paths: set[str] = set()


def _trust_key(path: str | os.PathLike) -> str:
    """A URL as written; a file by its real path (links and ``..`` resolved)."""
    from ..download import is_url

    return path if is_url(path) else os.path.realpath(os.path.expanduser(os.fspath(path)))


def trust_checkpoint(path: str | os.PathLike) -> None:
    """Allow full unpickling of ``path`` (a file or URL the user named with ``--trust``).
    Nothing else is ever trusted: not a folder, a marker file or an environment variable."""
    _trusted_paths.add(_trust_key(path))


def is_trusted_checkpoint(path: str | os.PathLike) -> bool:
    """True if ``path`` was given to :func:`trust_checkpoint`."""
    return _trust_key(path) in _trusted_paths


def register_checkpoint_loader() -> None:
    """Route mmengine's local-file and ``http(s)://`` checkpoint loading through mmvolo's
    one loader.

    torch >= 2.6 defaults to ``weights_only=True``, and the Runner's checkpoints hold
    ``HistoryBuffer``, numpy arrays and ``getattr`` records: ``--resume``, ``load_from`` and
    ``mmseg.apis.init_model`` fail with "Weights only load failed". mmengine's local loader
    is replaced by :func:`mmvolo.checkpoint.load_checkpoint_file`, which allows exactly what
    the Runner writes and runs no pickled code, unless the file was named with ``--trust``
    (:func:`trust_checkpoint`). Bad files fail with one line naming the file.

    mmengine's ``load_from_http`` (``torch.hub.load_url``) is replaced too: it unpickled what
    a server sent under torch's defaults, outside this trust rule. URLs now download through
    :mod:`mmvolo.download` (torch.hub's cache, atomic, sha256 prefix checked) and load as
    local files do.
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    from ..checkpoint import load_checkpoint_file
    from ..download import URL_PREFIXES

    def load_from_local(filename: str, map_location: Any) -> Any:
        filename = os.path.expanduser(filename)
        return load_checkpoint_file(filename, map_location,
                                    trust=is_trusted_checkpoint(filename))

    def load_from_http(filename: str, map_location: Any) -> Any:  # mmengine logs the name's tail
        return load_checkpoint_file(filename, map_location,
                                    trust=is_trusted_checkpoint(filename))

    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)
    CheckpointLoader.register_scheme(prefixes=list(URL_PREFIXES), loader=load_from_http,
                                     force=True)
