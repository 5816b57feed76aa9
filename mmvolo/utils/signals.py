"""SIGTERM as an exception: a ``kill`` cleans up like Ctrl-C (``finally`` blocks run, e.g.
:func:`mmvolo.fileio.atomic_path` removing its temporary file)."""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(BaseException):
    """SIGTERM arrived inside :func:`sigterm_raises`. A BaseException, as KeyboardInterrupt
    and SystemExit are: ``except Exception`` handlers let it through to the cleanup."""


@contextlib.contextmanager
def sigterm_raises(exception: type[BaseException] = Terminated,
                   message: str = 'terminated by signal {signum}') -> Iterator[None]:
    """Within the block, the first SIGTERM raises ``exception(message)`` in the main thread.

    Later SIGTERMs during the cleanup it starts are ignored; the previous handler is restored
    on exit. Outside the main thread (where handlers cannot be set) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: object) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise exception(message.format(signum=signum))

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
