"""Print a config with its bases, variables and ``--cfg-options`` resolved.

    python tools/misc/print_config.py CONFIG [--cfg-options KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import sys

from mmengine.config import Config, DictAction

import mmvolo  # noqa: F401  (stack fixes before mmseg, registers VOLO)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description='Print the resolved config')
    parser.add_argument('config', help='config file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, KEY=VALUE')
    return parser.parse_args(argv)


def resolved_config_text(path: str, cfg_options: dict | None = None) -> str:
    """The config at ``path`` (with ``cfg_options`` merged) as mmengine's pretty text."""
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg.pretty_text


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    print(resolved_config_text(args.config, args.cfg_options))
    return 0


if __name__ == '__main__':
    sys.exit(main())
