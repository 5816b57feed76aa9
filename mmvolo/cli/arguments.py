"""Command-line parsing for the tools: errors are one-line :class:`UsageError` messages.

argparse prints a usage block and ``prog: error: ...`` on bad arguments; the tools built on
:func:`mmvolo.cli.run_tool` print one line ``error: ...`` instead (exit code 2 as argparse's),
so a wrong argument looks like every other bad input.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import NoReturn

from mmengine.config import DictAction

from .checks import UsageError


class ToolArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` raising UsageError (exit 2) instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f'{message} (see {self.prog} --help)')


#: Bracket pairs a ``--cfg-options`` value may nest (mmengine's DictAction syntax).
_BRACKETS = {')': '(', ']': '['}


class CfgOptionsAction(DictAction):
    """mmengine's DictAction, with a malformed ``KEY=VALUE`` item a one-line UsageError.

    DictAction itself fails on such items with an AssertionError, a ValueError or a
    RecursionError (e.g. ``a=[(1,2],3)``).
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[str] | None, option_string: str | None = None) -> None:
        items = [values] if isinstance(values, str) else list(values or [])
        for item in items:
            problem = cfg_option_problem(item)
            if problem:
                raise UsageError(f'--cfg-options {item!r}: {problem}')
        try:
            super().__call__(parser, namespace, items, option_string)
        except (AssertionError, ValueError, RecursionError) as error:
            raise UsageError(f'--cfg-options {" ".join(items)!r}: cannot parse ({error})') \
                from None


def cfg_option_problem(item: str) -> str | None:
    """What is wrong with one ``--cfg-options`` item, or None if it is well formed."""
    key, sep, value = item.partition('=')
    if not sep or not key:
        return 'expected KEY=VALUE (e.g. train_cfg.max_iters=1000)'
    stack: list[str] = []
    for char in value:
        if char in '([':
            stack.append(char)
        elif char in _BRACKETS and (not stack or stack.pop() != _BRACKETS[char]):
            return f"unbalanced brackets in the value of {key} (unmatched '{char}')"
    if stack:
        return f"unbalanced brackets in the value of {key} (unclosed '{stack[-1]}')"
    return None


def add_cfg_options(parser: argparse.ArgumentParser) -> None:
    """``--cfg-options KEY=VALUE ...`` (mmengine's syntax), malformed items one line each."""
    parser.add_argument(
        '--cfg-options', nargs='+', action=CfgOptionsAction,
        help='override config settings, KEY=VALUE (e.g. train_cfg.max_iters=1000)')


def check_output_folder(flag: str, path: str | None) -> None:
    """Refuse an output file (e.g. ``--json``) whose folder does not exist, before any work.

    Raises:
        UsageError: ``--json X: folder F does not exist; create it first``.
    """
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f'{flag} {path}: folder {folder} does not exist; create it first')


def write_json_report(records: object, path: str | None) -> None:
    """Write a tool's records as indented JSON to ``path`` (checked with
    :func:`check_output_folder` first), atomically: a complete file or the previous one."""
    if path is None:
        return
    import json

    from mmvolo.fileio import write_text_atomic

    write_text_atomic(json.dumps(records, indent=2), path)
