"""Print the parameters and FLOPs of the segmentor a config describes.

    python tools/analysis/get_flops.py CONFIG [--shape H W] [--cfg-options KEY=VALUE ...]

Builds the model on CPU (SyncBN as BN, no checkpoint loaded) and counts one forward of a
(1, 3, H, W) image with mmengine's analysis tools; see :mod:`mmvolo.utils.complexity` for what
is and is not counted. Default shape: the config's crop size, else 512x512.
"""
from __future__ import annotations

import argparse
import sys
import time

from mmengine.config import Config, DictAction

import mmvolo  # noqa: F401  (stack fixes before mmseg, registers VOLO)
from mmvolo.utils import config_complexity


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description='Params and FLOPs of a segmentor config')
    parser.add_argument('config', help='config file')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input height and width (default: the config crop size)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, KEY=VALUE')
    return parser.parse_args(argv)


def default_shape(cfg: Config) -> tuple[int, int]:
    """The config's ``crop_size`` (H, W), else 512x512."""
    crop = cfg.get('crop_size', (512, 512))
    return int(crop[0]), int(crop[1])


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    shape = tuple(args.shape) if args.shape else default_shape(cfg)
    start = time.perf_counter()
    result = config_complexity(cfg, shape)
    print(f'Config: {args.config}')
    print(result.summary())
    print(f'(counted in {time.perf_counter() - start:.0f}s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
