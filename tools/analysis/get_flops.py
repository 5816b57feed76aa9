"""Print the parameters and FLOPs of the segmentor a config describes.

    python tools/analysis/get_flops.py CONFIG [--shape H W] [--cfg-options KEY=VALUE ...]

Builds the model on CPU (SyncBN as BN, no checkpoint loaded) and counts one forward of a
(1, 3, H, W) image with mmengine's analysis tools; see :mod:`mmvolo.utils.complexity` for what
is and is not counted. Default shape: the config's crop size, else 512x512. Bad input (a
missing or broken config, a shape that is not positive) prints one line ``error: ...`` and
exits with status 2.
"""
from __future__ import annotations

import argparse
import time

from mmengine.config import Config

import mmvolo  # noqa: F401  (registers VOLO; mmvolo.cli applies mmvolo.runtime)
from mmvolo.cli import UsageError, load_config, run_tool
from mmvolo.cli.arguments import ToolArgumentParser, add_cfg_options
from mmvolo.utils import config_complexity


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = ToolArgumentParser(description='Params and FLOPs of a segmentor config')
    parser.add_argument('config', help='config file')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input height and width (default: the config crop size)')
    add_cfg_options(parser)
    return parser.parse_args(argv)


def default_shape(cfg: Config) -> tuple[int, int]:
    """The config's ``crop_size`` (H, W), else 512x512."""
    crop = cfg.get('crop_size', (512, 512))
    try:
        return int(crop[0]), int(crop[1])
    except (TypeError, ValueError, IndexError):
        raise UsageError(f'the config\'s crop_size {crop!r} is not (H, W); pass --shape H W'
                         ) from None


def check_shape(shape: tuple[int, int], source: str) -> None:
    """Require a positive height and width (``source`` names where they came from)."""
    if len(shape) != 2 or min(shape) <= 0:
        raise UsageError(f'{source} must be two positive sizes H W, got '
                         f'{" ".join(map(str, shape))}')


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (bad input raises UsageError)."""
    args = parse_args(argv)
    if args.shape:
        check_shape(tuple(args.shape), '--shape')
    cfg = load_config(args.config, args.cfg_options)
    shape = tuple(args.shape) if args.shape else default_shape(cfg)
    check_shape(shape, 'the config\'s crop_size (or --shape)')
    start = time.perf_counter()
    result = config_complexity(cfg, shape)
    print(f'Config: {args.config}')
    print(result.summary())
    print(f'(counted in {time.perf_counter() - start:.0f}s)')
    return 0


if __name__ == '__main__':
    run_tool(main)
