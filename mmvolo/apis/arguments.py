"""An argument parser whose errors are one-line :class:`UsageError` messages.

argparse prints a usage block and ``prog: error: ...`` on bad arguments; the tools built on
:func:`mmvolo.apis.run_tool` print one line ``error: ...`` instead (exit code 2 as argparse's),
so a wrong argument looks like every other bad input.
"""
from __future__ import annotations

import argparse
from typing import NoReturn

from .checks import UsageError


class ToolArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` raising UsageError (exit 2) instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f'{message} (see {self.prog} --help)')
