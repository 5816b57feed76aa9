"""Generate a toy segmentation dataset: the quick start's (ADE20K folder layout) or the same
shapes in Cityscapes' layout (docs/datasets.md).

    python tools/make_toy_dataset.py OUT_DIR [--num-train N] [--num-val N] [--size PX]
                                     [--seed 0] [--layout {ade20k,cityscapes}]
                                     [--without-train-ids]

``--layout cityscapes`` writes ``leftImg8bit/`` and ``gtFine/`` (``*_gtFine_labelTrainIds.png``,
``*_gtFine_labelIds.png``, ``*_gtFine_polygons.json``); ``--without-train-ids`` leaves out the
``labelTrainIds`` files, as the download is before mmseg's converter runs.
"""
from __future__ import annotations

import argparse
import time

from mmvolo.datasets.toy_cityscapes import ToyCityscapesSpec, generate_toy_cityscapes
from mmvolo.datasets.toy_generator import TOY_CLASSES, ToySpec, generate_toy_dataset


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir', help='dataset root to write (e.g. work_dirs/toy_data)')
    parser.add_argument('--layout', choices=['ade20k', 'cityscapes'], default='ade20k',
                        help='folder layout and label ids (default: ade20k)')
    parser.add_argument('--num-train', type=int,
                        help=f'default {ToySpec.num_train} (ade20k), '
                        f'{ToyCityscapesSpec.num_train} (cityscapes)')
    parser.add_argument('--num-val', type=int,
                        help=f'default {ToySpec.num_val} (ade20k), '
                        f'{ToyCityscapesSpec.num_val} (cityscapes)')
    parser.add_argument('--size', type=int, help='image side (px; cityscapes: the height, '
                        f'width twice it); default {ToySpec.size} (ade20k), '
                        f'{ToyCityscapesSpec.size} (cityscapes)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--without-train-ids', action='store_true',
                        help='cityscapes: no *_gtFine_labelTrainIds.png (the unconverted '
                        'download)')
    args = parser.parse_args()
    if args.without_train_ids and args.layout != 'cityscapes':
        parser.error('--without-train-ids needs --layout cityscapes')
    return args


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    given = {key: value for key, value in (('num_train', args.num_train),
                                           ('num_val', args.num_val), ('size', args.size),
                                           ('seed', args.seed)) if value is not None}
    if args.layout == 'cityscapes':
        spec = ToyCityscapesSpec(with_train_ids=not args.without_train_ids, **given)
        root = generate_toy_cityscapes(args.out_dir, spec)
        what = (f'{spec.size}x{2 * spec.size}, Cityscapes layout, 19 train ids'
                + ('' if spec.with_train_ids else ', no labelTrainIds'))
    else:
        spec = ToySpec(**given)
        root = generate_toy_dataset(args.out_dir, spec)
        what = f'{spec.size}x{spec.size}, classes {", ".join(TOY_CLASSES)}'
    print(f'wrote {spec.num_train} training + {spec.num_val} validation images ({what}) '
          f'to {root} in {time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
    main()
