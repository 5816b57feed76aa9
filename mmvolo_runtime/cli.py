"""``tools/deploy/infer_onnx.py``: segment images with an mmvolo ONNX export (no torch).

    python tools/deploy/infer_onnx.py MODEL.onnx IMAGE_OR_FOLDER ... --out-dir DIR
        [--overlays] [--opacity 0.5] [--threads N] [--window-batch 4]

Per image ``DIR/<stem>.png``: the label map, one channel of class ids (uint8; 16-bit beyond
256 classes); with ``--overlays`` also ``DIR/overlays/<stem>.png``, the image with the classes
painted over it as tools/inference.py paints them. Folders give their images (not
recursive). Everything is checked before the first file is written: the model's metadata,
each input (an image file, readable, a size the model can run), the stems (distinct), the
output folder (not holding an input). Each PNG goes to a temporary file first, then is
renamed into place. Bad input: one line ``error: ...``, exit status 2 (1: onnxruntime fails).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
import tempfile
from collections import defaultdict

import cv2
import numpy as np

from .errors import UsageError, run_cli
from .inputs import check_out_dir, list_images
from .paint import paint_overlay
from .segmentor import OnnxSegmentor

OVERLAYS = 'overlays'


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line ``error: ...`` (exit 2), as mmvolo's tools."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f'{message} (see --help)')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(description='Segment images with an mmvolo ONNX export (onnxruntime; '
                     'no torch needed)')
    parser.add_argument('model', help='the .onnx file from tools/deploy/export_onnx.py')
    parser.add_argument('inputs', nargs='+', help='image files and/or folders of images')
    parser.add_argument('--out-dir', required=True,
                        help='where label maps go (not a folder holding input images)')
    parser.add_argument('--overlays', action='store_true',
                        help='also write colour overlays to OUT_DIR/overlays/')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='opacity of the painted classes, 0..1 (default 0.5)')
    parser.add_argument('--threads', type=int, default=None,
                        help='onnxruntime intra-op threads (default: onnxruntime\'s)')
    parser.add_argument('--window-batch', type=int, default=4,
                        help='sliding windows per forward pass for a --dynamic export '
                        '(default 4)')
    return parser.parse_args(argv)


def output_stems(images: list[str]) -> dict[str, str]:
    """{image: output stem}; two images with one stem (``a/x.jpg``, ``b/x.png``) are refused."""
    by_stem: dict[str, list[str]] = defaultdict(list)
    for path in images:
        by_stem[osp.splitext(osp.basename(path))[0]].append(path)
    for stem, paths in by_stem.items():
        if len(paths) > 1:
            raise UsageError(f'inputs {paths[0]} and {paths[1]} would both be written to '
                             f'{stem}.png; rename one of them or run them separately')
    return {paths[0]: stem for stem, paths in by_stem.items()}


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR, decoded as mmseg's LoadImageFromFile does (cv2, IMREAD_COLOR)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise UsageError(f'cannot read input {path}: {error.strerror or error}') from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise UsageError(f'input {path} is not a readable image (corrupt, or not an image '
                         'despite its suffix); drop it from the inputs')
    return image


def write_png(array: np.ndarray, out_file: str) -> None:
    """Encode ``array`` as PNG into a temporary file next to ``out_file``, then rename it."""
    ok, data = cv2.imencode('.png', array)
    if not ok:
        raise UsageError(f'cannot encode {out_file}', exit_code=1)
    folder = osp.dirname(osp.abspath(out_file))
    try:
        os.makedirs(folder, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(out_file)}.', suffix='.tmp',
                                       dir=folder)
        try:
            with os.fdopen(handle, 'wb') as stream:
                stream.write(data.tobytes())
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, out_file)
        finally:
            if osp.exists(tmp):
                os.remove(tmp)
    except OSError as error:
        raise UsageError(f'cannot write {out_file}: {error.strerror or error}',
                         exit_code=1) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not 0 <= args.opacity <= 1:
        raise UsageError(f'--opacity must be within 0..1, got {args.opacity}')
    if args.window_batch < 1:
        raise UsageError(f'--window-batch must be at least 1, got {args.window_batch}')
    if args.threads is not None and args.threads < 1:
        raise UsageError(f'--threads must be at least 1, got {args.threads}')
    images = list_images(args.inputs)
    stems = output_stems(images)
    check_out_dir(args.out_dir, images)
    segmentor = OnnxSegmentor(args.model, threads=args.threads,
                              window_batch=args.window_batch)
    inexact = [path for path in images
               if not segmentor.plan(*read_image(path).shape[:2], source=f'input {path}').exact]
    info = segmentor.info
    for path in images:
        image = read_image(path)
        labels, _ = segmentor.predict(image)
        write_png(labels, osp.join(args.out_dir, stems[path] + '.png'))
        if args.overlays:
            overlay = paint_overlay(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), labels,
                                    info.classes, info.palette, args.opacity)
            write_png(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR),
                      osp.join(args.out_dir, OVERLAYS, stems[path] + '.png'))
    print(f'wrote {len(images)} label maps{" and overlays" if args.overlays else ""} to '
          f'{args.out_dir} ({info.mode} mode, {_graph_size(segmentor)} graph)')
    if inexact:
        print(f'note: {len(inexact)} image(s) ({inexact[0]}, ...) ran with padding mmseg would '
              'not add (smaller than the exported size); their logits differ from mmseg\'s near '
              'the padding (docs/deploy.md, "Run the exported file")', file=sys.stderr)


def _graph_size(segmentor: OnnxSegmentor) -> str:
    size = segmentor.input_size
    return 'dynamic-size' if size is None else f'{size[0]}x{size[1]}'


def run() -> None:
    run_cli(main)
