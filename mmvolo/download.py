"""Checkpoints by URL: download once into torch.hub's cache, atomically, then read as a file.

Every ``checkpoint=`` mmvolo accepts may be an ``http://`` / ``https://`` URL, as in
mmengine: :func:`mmvolo.checkpoint.load_checkpoint_file` calls :func:`resolve_checkpoint_path`
first, so ``init_cfg=dict(type='Pretrained')``, ``load_from``, the converter and the test and
inference tools all get the same behaviour:

- the file goes to ``<torch.hub.get_dir()>/checkpoints/<basename of the URL>`` (TORCH_HOME,
  as ``torch.hub.load_state_dict_from_url``), and a file already there is used without network
  (so a file put there by hand works offline);
- the download is written to a temporary file in that folder, fsynced and renamed onto the
  cache path only when complete (:func:`mmvolo.fileio.atomic_path`): a connection closed
  mid-file, fewer bytes than Content-Length, a zip archive without its end record or Ctrl-C
  (SIGTERM where the tool turns it into an exception) leave no cached file and no temporary
  file (a process killed outright can leave a hidden ``.<name>.*.tmp``, never the cache name);
- a name carrying torch.hub's hash suffix (``name-<hex>.pth``, at least
  :data:`MIN_HASH_PREFIX` hex digits after the last ``-``) must match the file's sha256, or
  nothing is kept;
- the file is then read by the same weights-only loader and trust rule as a local file: a
  hostile pickle served over HTTP is refused exactly as from disk.

Progress goes to stderr, and only when stderr is a terminal (logs stay clean). In a
distributed job with an initialised process group, rank 0 downloads while the others wait at
a barrier, then read the cache (as mmengine's ``load_from_http``); processes that download at
the same time without a process group (e.g. the tools' checks before it exists) cannot corrupt
the cache either: each writes its own temporary file and the renames are atomic.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from typing import BinaryIO, Callable

from .checkpoint import ZIP_MAGIC, CheckpointError
from .fileio import atomic_path

#: URL schemes that are downloaded (the others are paths, as for mmengine's loader).
URL_PREFIXES = ('http://', 'https://')
#: torch.hub's convention: ``name-<sha256 prefix>.ext``, at least this many hex digits.
MIN_HASH_PREFIX = 6
#: Seconds a connect or read may stall before the download fails.
TIMEOUT_S = 60.0
#: Bytes read per chunk.
CHUNK_BYTES = 1 << 20
USER_AGENT = 'mmvolo'


class DownloadError(CheckpointError):
    """A checkpoint URL that could not be fetched into the cache; one line naming both."""


def is_url(path: object) -> bool:
    """True for an ``http://`` or ``https://`` string (case-insensitive scheme)."""
    return isinstance(path, str) and path[:8].lower().startswith(URL_PREFIXES)


def cache_path(url: str) -> str:
    """Where ``url`` is cached: ``<torch.hub.get_dir()>/checkpoints/<basename>``.

    Raises:
        DownloadError: the URL names no file (empty basename).
    """
    import torch.hub

    name = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    if not name or name in ('.', '..'):
        raise DownloadError(f'checkpoint URL {url} names no file (its path ends with "/")')
    return os.path.join(torch.hub.get_dir(), 'checkpoints', name)


def hash_prefix(filename: str) -> str | None:
    """The sha256 prefix a torch.hub-style name carries (``resnet18-f37072fd.pth`` ->
    ``f37072fd``), or None (``d1_224_84.2.pth.tar``)."""
    if '-' not in filename:
        return None
    found = re.match(rf'([0-9a-f]{{{MIN_HASH_PREFIX},}})\.', filename.rsplit('-', 1)[1])
    return found.group(1) if found else None


def resolve_checkpoint_path(path: str | os.PathLike) -> str:
    """A local path for ``path``: itself, or for a URL the cached (downloaded once) file.

    In a distributed job (an initialised process group of 2+ ranks) every rank passes one
    barrier per URL, cached or not, as mmengine's ``load_from_http`` does: rank 0 downloads
    before it, the others read the cache after it. So all ranks must resolve the same URLs
    (they do: model init and ``load_from`` run on every rank).

    Raises:
        DownloadError: the download failed (one line naming the URL and, when offline, the
            cache path to put the file at by hand), or its sha256 prefix does not match.
    """
    if not is_url(path):
        return os.fspath(path)
    url = str(path)
    dst = cache_path(url)
    rank, world_size = _dist_info()
    if world_size <= 1:
        if not os.path.isfile(dst):
            download(url, dst)
        return dst
    failure: DownloadError | None = None
    if rank == 0 and not os.path.isfile(dst):
        try:
            download(url, dst)
        except DownloadError as error:  # reach the barrier anyway: the others wait there
            failure = error
    import torch.distributed

    torch.distributed.barrier()  # unconditional: a rank that skipped it would desync the rest
    if failure is not None:
        raise failure
    if rank > 0 and not os.path.isfile(dst):  # a cache folder not shared between nodes
        download(url, dst)
    return dst


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def download(url: str, dst: str, progress: bool | None = None) -> None:
    """Fetch ``url`` into ``dst`` atomically; ``dst`` appears only complete and checked.

    Args:
        progress: show a progress bar on stderr; None: only when stderr is a terminal.

    Raises:
        DownloadError: network failure, HTTP error, truncated body or sha256 mismatch.
    """
    expected_hash = hash_prefix(os.path.basename(dst))
    show = sys.stderr.isatty() if progress is None else progress
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers={'User-Agent': USER_AGENT}), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        raise DownloadError(f'cannot download checkpoint {url}: HTTP {error.code} '
                            f'{error.reason}') from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, 'reason', None) or error
        raise DownloadError(
            f'cannot download checkpoint {url} ({_short(reason)}); without network, put the '
            f'file at {dst} by hand') from None
    with response, atomic_path(dst) as tmp:
        length = _content_length(response)
        digest = _copy(response, tmp, url, length, show)
        _require_complete(url, tmp, length)
        if expected_hash and not digest.startswith(expected_hash):
            raise DownloadError(f'checkpoint {url} has sha256 {digest[:len(expected_hash)]}..., '
                                f'not the {expected_hash} its name says; nothing was cached '
                                '(a changed or corrupted file: check the URL)')


def _content_length(response: BinaryIO) -> int | None:
    value = response.headers.get('Content-Length')
    return int(value) if value and value.isdigit() else None


def _copy(response: BinaryIO, tmp: str, url: str, length: int | None, show: bool) -> str:
    """Stream the body into ``tmp``; returns its sha256 (hex)."""
    digest = hashlib.sha256()
    received = 0
    with open(tmp, 'wb') as out, _progress_bar(url, length, show) as advance:
        while True:
            try:
                chunk = response.read(CHUNK_BYTES)
            except (OSError, ValueError) as error:  # http.client.IncompleteRead, resets
                raise DownloadError(f'download of checkpoint {url} broke off after {received} '
                                    f'bytes ({_short(error)}); nothing was cached, retry') from None
            if not chunk:
                break
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            advance(len(chunk))
    if length is not None and received != length:
        raise DownloadError(f'download of checkpoint {url} broke off after {received} of '
                            f'{length} bytes; nothing was cached, retry')
    return digest.hexdigest()


def _require_complete(url: str, tmp: str, length: int | None) -> None:
    """Without a Content-Length a cut body can look complete: a zip (torch.save's format)
    must at least end with its end-of-archive record."""
    with open(tmp, 'rb') as stream:
        head = stream.read(len(ZIP_MAGIC))
    if head == ZIP_MAGIC and not zipfile.is_zipfile(tmp):
        raise DownloadError(f'download of checkpoint {url} is incomplete (the zip archive has '
                            'no end record); nothing was cached, retry')
    if not head and length is None:
        raise DownloadError(f'checkpoint {url} came back empty; nothing was cached')


@contextlib.contextmanager
def _progress_bar(url: str, total: int | None, show: bool) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``: a rich progress bar on stderr when ``show``, else a no-op."""
    if not show:
        yield lambda _: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    progress = Progress(TextColumn('{task.description}'), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), console=Console(file=sys.stderr))
    task = progress.add_task(os.path.basename(urllib.parse.urlparse(url).path), total=total)
    with progress:
        yield lambda count: progress.advance(task, count)


def _short(error: object) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]
