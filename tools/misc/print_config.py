"""Print a config with its bases, variables and ``--cfg-options`` resolved.

    python tools/misc/print_config.py CONFIG [--cfg-options KEY=VALUE ...]

A missing or broken config (or bad ``--cfg-options``) prints one line ``error: ...`` and
exits with status 2.
"""
from __future__ import annotations

import argparse

import mmvolo  # noqa: F401  (registers VOLO; mmvolo.cli applies mmvolo.runtime)
from mmvolo.cli import load_config, run_tool
from mmvolo.cli.arguments import ToolArgumentParser, add_cfg_options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = ToolArgumentParser(description='Print the resolved config')
    parser.add_argument('config', help='config file')
    add_cfg_options(parser)
    return parser.parse_args(argv)


def resolved_config_text(path: str, cfg_options: dict | None = None) -> str:
    """The config at ``path`` (with ``cfg_options`` merged) as mmengine's pretty text.

    Raises:
        UsageError: missing or unreadable config, or bad ``cfg_options``.
    """
    return load_config(path, cfg_options).pretty_text


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    print(resolved_config_text(args.config, args.cfg_options))
    return 0


if __name__ == '__main__':
    run_tool(main)
