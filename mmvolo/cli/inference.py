"""``tools/inference.py``: segment images with a trained checkpoint and save colour overlays.

    python tools/inference.py CONFIG CHECKPOINT INPUT [INPUT ...] --out-dir DIR
                              [--opacity 0.5] [--device cpu|cuda:0]

INPUT: image files or folders (their images, not recursive). Writes one PNG per image under
DIR, at the image's path relative to the inputs' common folder with its suffix replaced by
``.png`` (``a/x.jpg`` and ``b/x.jpg`` give ``DIR/a/x.png`` and ``DIR/b/x.png``; images of one
folder that share a stem keep their suffix: ``x.jpg.png``, ``x.png.png``). Each overlay is the
image with the predicted classes painted over it (mmseg's SegLocalVisualizer), with class
names written on it when the image is at least 128 pixels on its short side.

Inputs are never overwritten: DIR may not be (or contain) the folder of an input image. Every
input is checked (an image file, readable, not too elongated for the config's test Resize)
before the model is loaded, and each overlay is written to a temporary file first, then
renamed into place.
"""
from __future__ import annotations

import argparse
import os.path as osp
from collections import Counter

from mmengine.config import Config

from mmvolo_runtime.inputs import check_out_dir, list_images

from .. import runtime  # the stack fixes, before mmseg loads
from ..fileio import write_bytes_atomic
from ..utils.errors import first_line
from .arguments import ToolArgumentParser
from .checks import UsageError, check_arch, check_checkpoint, check_seg_config, load_config

#: Class names are written on the overlay only for images at least this large (pixels).
MIN_SIZE_FOR_LABELS = 128


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ToolArgumentParser(description='Segment images and save colour overlays')
    parser.add_argument('config', help='model config file')
    parser.add_argument('checkpoint', help='trained checkpoint: a file or an http(s):// URL '
                        '(downloaded once into the torch hub cache)')
    parser.add_argument('inputs', nargs='+', help='image files and/or folders of images')
    parser.add_argument('--out-dir', required=True,
                        help='where the overlays go (not a folder holding input images)')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='opacity of the painted classes, 0..1 (default 0.5)')
    parser.add_argument('--device', default=None,
                        help="torch device (default: 'cuda:0' if available, else 'cpu')")
    parser.add_argument('--trust', action='store_true',
                        help='unpickle CHECKPOINT with full trust (runs code inside it; only '
                        'for files you trust)')
    return parser.parse_args(argv)


def output_names(images: list[str]) -> dict[str, str]:
    """{image: overlay path relative to the output folder}, distinct for distinct images.

    Paths are relative to the images' common folder; the suffix becomes ``.png``, or is kept
    (``x.jpg.png``) where two images would otherwise get the same name.
    """
    root = osp.commonpath([osp.dirname(osp.abspath(path)) for path in images])
    relative = {path: osp.relpath(osp.abspath(path), root) for path in images}
    stems = Counter(osp.splitext(rel)[0] for rel in relative.values())
    names = {path: (osp.splitext(rel)[0] if stems[osp.splitext(rel)[0]] == 1 else rel) + '.png'
             for path, rel in relative.items()}
    clashes = [name for name, count in Counter(names.values()).items() if count > 1]
    if clashes:
        both = [path for path, name in names.items() if name == clashes[0]]
        raise UsageError(f'inputs {both[0]} and {both[1]} would both be written to '
                         f'{clashes[0]}; rename one of them')
    return names


def read_sizes(images: list[str]) -> dict[str, tuple[int, int]]:
    """{image: (height, width)}; an unreadable file is a UsageError."""
    return {path: _image_size(path) for path in images}


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except Exception:  # noqa: BLE001 - PIL lacks some formats cv2 reads; try cv2 below
        pass
    import cv2

    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UsageError(f'input {path} is not a readable image (corrupt, or not an image '
                         'despite its suffix); drop it from the inputs')
    return tuple(image.shape[:2])


def check_test_resize(cfg: Config, sizes: dict[str, tuple[int, int]]) -> None:
    """Refuse images the config's keep-ratio test Resize would shrink to zero pixels."""
    import mmcv

    for step in cfg.get('test_pipeline') or []:
        if step.get('type') != 'Resize' or not step.get('keep_ratio') or not step.get('scale'):
            continue
        scale = step['scale']
        scale = (scale, scale) if isinstance(scale, int) else tuple(scale)
        for path, (height, width) in sizes.items():
            new_w, new_h = mmcv.rescale_size((width, height), scale)
            if min(new_w, new_h) < 1:
                raise UsageError(
                    f'input {path} is {height}x{width} (HxW): the config\'s test Resize (scale '
                    f'{scale}, keep_ratio) would make it {new_h}x{new_w}; crop it to a less '
                    'extreme aspect ratio')


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not 0 <= args.opacity <= 1:
        raise UsageError(f'--opacity must be within 0..1, got {args.opacity}')
    images = list_images(args.inputs)
    check_out_dir(args.out_dir, images, what='overlays')
    names = output_names(images)
    sizes = read_sizes(images)
    cfg = load_config(args.config)
    check_seg_config(cfg, args.config, 'infer')
    if not cfg.get('test_pipeline'):
        raise UsageError(f'{args.config} has no test_pipeline: inference needs one (the test '
                         'image transforms)')
    check_test_resize(cfg, sizes)
    check_arch(cfg)
    check_checkpoint(args.checkpoint, cfg, trust=args.trust)
    if args.trust:
        runtime.trust_checkpoint(args.checkpoint)
    outputs = {path: osp.join(args.out_dir, name) for path, name in names.items()}
    written = paint_overlays(cfg, args.checkpoint, outputs, args.opacity,
                             checked_device(args.device))
    print(f'wrote {len(written)} overlays to {args.out_dir}')


def checked_device(device: str | None) -> str:
    """``--device``, or 'cuda:0' when CUDA is there, else 'cpu'; one line if unusable."""
    import torch

    if device is None:
        return 'cuda:0' if torch.cuda.is_available() else 'cpu'
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a torch device (e.g. 'cpu', 'cuda:0')") \
            from None
    if parsed.type == 'cuda' and not torch.cuda.is_available():
        raise UsageError(f'--device {device}: CUDA is not available here; use --device cpu')
    if parsed.type == 'cuda' and (parsed.index or 0) >= torch.cuda.device_count():
        raise UsageError(f'--device {device}: this machine has {torch.cuda.device_count()} '
                         'CUDA device(s)')
    return device


def paint_overlays(cfg: Config, checkpoint: str, outputs: dict[str, str], opacity: float,
                   device: str) -> list[str]:
    """Run the model on each image (``outputs``: image -> overlay file); save prediction
    overlays; return the written paths."""
    import mmcv
    from mmengine.model import revert_sync_batchnorm
    from mmseg.apis import init_model
    from mmseg.visualization import SegLocalVisualizer

    model = init_model(cfg, checkpoint, device=device)
    if device == 'cpu':
        model = revert_sync_batchnorm(model)
    visualizer = SegLocalVisualizer(name='mmvolo_inference', alpha=opacity)
    visualizer.dataset_meta = model.dataset_meta
    written = []
    for path, out_file in outputs.items():
        # numpy, not tensors: mmseg's visualizer indexes the image with ``pred == label``,
        # which for a one-pixel tensor is read as the integer index 0 or 1 (IndexError at 1x1)
        result = _segment(model, path).cpu().numpy()
        image = mmcv.imread(path, channel_order='rgb')
        visualizer.add_datasample(osp.basename(path), image, result, draw_gt=False,
                                  show=False,
                                  with_labels=min(image.shape[:2]) >= MIN_SIZE_FOR_LABELS)
        write_png(visualizer.get_image(), out_file)
        written.append(out_file)
    return written


def _segment(model, path: str):
    """The model's prediction for one image; a failure names the image (one line)."""
    import cv2
    from mmseg.apis import inference_model

    try:
        return inference_model(model, path)
    except (cv2.error, AssertionError, ValueError, RuntimeError) as error:
        raise UsageError(f'cannot segment {path}: {first_line(error)}', exit_code=1) from None


def write_png(rgb, out_file: str) -> None:
    """Write an RGB array as PNG: to a temporary file next to ``out_file``, then renamed."""
    import cv2

    ok, data = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UsageError(f'cannot encode the overlay for {out_file}', exit_code=1)
    try:
        write_bytes_atomic(data.tobytes(), out_file)
    except OSError as error:
        raise UsageError(f'cannot write {out_file}: {error.strerror or error}',
                         exit_code=1) from None

