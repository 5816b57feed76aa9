"""One-line errors for the runtime and its CLI: the one ``UsageError`` of every mmvolo tool
(:mod:`mmvolo.cli` re-exports it; this module imports nothing beyond the stdlib)."""
from __future__ import annotations

import sys
from typing import Callable


class UsageError(Exception):
    """Bad input to the runtime: the message is one line naming the fix."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_cli(main: Callable[[], None]) -> None:
    """Run ``main``; a :class:`UsageError` ends in ``error: <line>`` on stderr and its code."""
    try:
        main()
    except UsageError as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print('error: interrupted; files written so far are complete, none is half-written',
              file=sys.stderr)
        sys.exit(130)
