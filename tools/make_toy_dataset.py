"""Generate the quick start's toy segmentation dataset (ADE20K folder layout).

    python tools/make_toy_dataset.py OUT_DIR [--num-train 240] [--num-val 40] [--size 64]
                                     [--seed 0]
"""
from __future__ import annotations

import argparse
import time

from mmvolo.datasets.toy_generator import TOY_CLASSES, ToySpec, generate_toy_dataset


def parse_args() -> argparse.Namespace:
    defaults = ToySpec()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir', help='dataset root to write (e.g. work_dirs/toy_data)')
    parser.add_argument('--num-train', type=int, default=defaults.num_train)
    parser.add_argument('--num-val', type=int, default=defaults.num_val)
    parser.add_argument('--size', type=int, default=defaults.size, help='image side (px)')
    parser.add_argument('--seed', type=int, default=defaults.seed)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    spec = ToySpec(num_train=args.num_train, num_val=args.num_val, size=args.size,
                   seed=args.seed)
    root = generate_toy_dataset(args.out_dir, spec)
    print(f'wrote {spec.num_train} training + {spec.num_val} validation images '
          f'({spec.size}x{spec.size}, classes {", ".join(TOY_CLASSES)}) to {root} '
          f'in {time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
    main()
