"""Convert official (sail-sg) or timm VOLO weights into a tensor-only mmvolo checkpoint.

The logic behind ``tools/model_converters/volo2mmseg.py`` (a thin command line over :func:`main`).

    python tools/model_converters/volo2mmseg.py SRC DST [--keep-head] [--img-size H [W]]
        [--ema] [--safetensors] [--trust] [--verify]

SRC may be an ``http(s)://`` URL, e.g. an official release file
(``https://github.com/sail-sg/volo/releases/download/volo_1/d1_224_84.2.pth.tar``): it is
downloaded once into ``<torch.hub.get_dir()>/checkpoints/`` and read from there (offline, a
file put there by hand is used).

Default output: backbone weights with official names (classification head dropped) for
``VOLO(init_cfg=dict(type='Pretrained', checkpoint=DST))`` in mmseg configs. ``--keep-head``
writes the mmpretrain classifier layout (``backbone.*``, ``head.*``) for the configs in
configs/volo_cls/ (``load_from=DST``, or ``init_cfg`` of backbone and head to fine-tune at a
new resolution).

Errors print one line ``error: ...`` on stderr: exit status 2 for wrong arguments (DST is
SRC, ``--img-size`` not multiples of 16 up to 4096, ``--ema`` on a file without EMA
weights), 1 for an unusable SRC or a failed write, 130/143 when interrupted (Ctrl-C/SIGTERM).
DST is written through a temporary file next to it: on any failure DST is left as it was
and no temporary file remains.
"""
from __future__ import annotations

import argparse
import errno
import os
import signal

from mmvolo.cli import UsageError
from mmvolo.cli.arguments import ToolArgumentParser
from mmvolo.converter import (
    ImageSizeError,
    OutputPathError,
    convert_checkpoint,
    summary_table,
    target_grid,
)
from mmvolo.models.weights import NoEmaWeightsError
from mmvolo.utils.signals import Terminated, sigterm_raises


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ToolArgumentParser(
        description='Convert official/timm VOLO weights to a tensor-only mmvolo checkpoint.')
    parser.add_argument('src', help='VOLO checkpoint: .pth, .pth.tar, .bin or .safetensors, or '
                        'its http(s):// URL (downloaded once into the torch hub cache)')
    parser.add_argument('dst', help='output file (.safetensors output when it ends so)')
    parser.add_argument('--keep-head', action='store_true',
                        help='keep the classification head (mmpretrain classifier layout)')
    parser.add_argument('--img-size', type=int, nargs='+', metavar=('H', 'W'),
                        help='target resolution: resize pos_embed to (H/16, W/16)')
    parser.add_argument('--ema', action='store_true',
                        help='take the EMA weights (state_dict_ema); the file must hold them')
    parser.add_argument('--safetensors', action='store_true',
                        help='write .safetensors whatever DST ends with')
    parser.add_argument('--trust', action='store_true',
                        help='allow a SRC that needs arbitrary pickled code to load '
                             '(only for sources you trust)')
    parser.add_argument('--verify', action='store_true',
                        help="compare with timm's volo model on a random image (needs timm)")
    args = parser.parse_args(argv)
    if args.img_size is not None and len(args.img_size) > 2:
        raise UsageError(f'--img-size takes H or H W, got {len(args.img_size)} numbers')
    return args


def main(argv: list[str] | None = None) -> None:
    """Convert; bad input raises UsageError (printed as one line by :func:`run_tool`)."""
    args = parse_args(argv)
    try:
        target_grid(args.img_size)
    except ImageSizeError as error:
        raise UsageError(f'--img-size: {error}') from None
    try:
        with sigterm_raises():
            result = convert_checkpoint(args.src, args.dst, keep_head=args.keep_head,
                                        img_size=args.img_size, ema=args.ema,
                                        safetensors=args.safetensors, trust=args.trust,
                                        verify=args.verify)
    except OutputPathError as error:
        raise UsageError(str(error)) from None
    except NoEmaWeightsError as error:
        raise UsageError(f'{error}; drop --ema') from None
    except (KeyboardInterrupt, Terminated) as error:
        raise interrupted(error, args.dst) from None
    except OSError as error:
        raise write_failed(error, args.dst) from None
    print(summary_table(result))


def interrupted(error: BaseException, dst: str) -> UsageError:
    """The error for Ctrl-C / SIGTERM; exit code 128 + the signal number, as a shell's."""
    signum = signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT
    return UsageError(f'interrupted by {signum.name}; {dst} not written (left as it was)',
                      exit_code=128 + signum)


def write_failed(error: OSError, dst: str) -> UsageError:
    """The error for a failed write (disk full, no permission, ...)."""
    hint = ': free some space or write elsewhere' if error.errno == errno.ENOSPC else ''
    reason = error.strerror or str(error) or type(error).__name__
    state = 'left as it was' if os.path.exists(dst) else 'not written'
    return UsageError(f'cannot write {dst}: {reason}{hint}; {dst} {state}', exit_code=1)
