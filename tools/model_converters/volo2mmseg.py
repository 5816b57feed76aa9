"""Convert official (sail-sg) or timm VOLO weights into a tensor-only mmvolo checkpoint.

    python tools/model_converters/volo2mmseg.py SRC DST [--keep-head] [--img-size H [W]]
        [--ema] [--safetensors] [--trust] [--verify]

Default output: backbone weights with official names (classification head dropped) for
``VOLO(init_cfg=dict(type='Pretrained', checkpoint=DST))`` in mmseg configs. ``--keep-head``
writes the mmpretrain classifier layout (``backbone.*``, ``head.*``) for the configs in
configs/volo_cls/ (``load_from=DST``, or ``init_cfg`` of backbone and head to fine-tune at a
new resolution). Errors print one line on stderr and exit with status 1.
"""
from __future__ import annotations

import argparse
import sys

from mmvolo.converter import convert_checkpoint, summary_table
from mmvolo.models.weights import CheckpointError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Convert official/timm VOLO weights to a tensor-only mmvolo checkpoint.')
    parser.add_argument('src', help='VOLO checkpoint: .pth, .pth.tar, .bin or .safetensors')
    parser.add_argument('dst', help='output file (.safetensors output when it ends so)')
    parser.add_argument('--keep-head', action='store_true',
                        help='keep the classification head (mmpretrain classifier layout)')
    parser.add_argument('--img-size', type=int, nargs='+', metavar=('H', 'W'),
                        help='target resolution: resize pos_embed to (H/16, W/16)')
    parser.add_argument('--ema', action='store_true',
                        help='take the EMA weights (state_dict_ema) when present')
    parser.add_argument('--safetensors', action='store_true',
                        help='write .safetensors whatever DST ends with')
    parser.add_argument('--trust', action='store_true',
                        help='allow a SRC that needs arbitrary pickled code to load '
                             '(only for sources you trust)')
    parser.add_argument('--verify', action='store_true',
                        help="compare with timm's volo model on a random image (needs timm)")
    args = parser.parse_args(argv)
    if args.img_size is not None and len(args.img_size) > 2:
        parser.error('--img-size takes H or H W')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = convert_checkpoint(args.src, args.dst, keep_head=args.keep_head,
                                    img_size=args.img_size, ema=args.ema,
                                    safetensors=args.safetensors, trust=args.trust,
                                    verify=args.verify)
    except CheckpointError as error:
        print(f'volo2mmseg: error: {error}', file=sys.stderr)
        return 1
    except OSError as error:
        print(f'volo2mmseg: error: cannot write {args.dst}: {error.strerror or error}',
              file=sys.stderr)
        return 1
    print(summary_table(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
