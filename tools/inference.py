"""Segment images with a trained checkpoint and save colour overlays.

    python tools/inference.py CONFIG CHECKPOINT INPUT [INPUT ...] --out-dir DIR
                              [--opacity 0.5] [--device cpu|cuda:0]

INPUT: image files or folders (their images, not recursive). Writes ``DIR/<name>.png``:
the image with the predicted classes painted over it (mmseg's SegLocalVisualizer), with
class names written on it when the image is at least 128 pixels on its short side.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp

from mmengine.config import Config

import mmvolo  # noqa: F401 - registers VOLO and applies the stack fixes before mmseg loads
from mmvolo import stack_fixes
from mmvolo.apis import (
    UsageError,
    check_arch,
    check_checkpoint,
    check_seg_config,
    load_config,
    run_tool,
)

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
#: Class names are written on the overlay only for images at least this large (pixels).
MIN_SIZE_FOR_LABELS = 128


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Segment images and save colour overlays')
    parser.add_argument('config', help='model config file')
    parser.add_argument('checkpoint', help='trained checkpoint')
    parser.add_argument('inputs', nargs='+', help='image files and/or folders of images')
    parser.add_argument('--out-dir', required=True, help='where the overlays go')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='opacity of the painted classes, 0..1 (default 0.5)')
    parser.add_argument('--device', default=None,
                        help="torch device (default: 'cuda:0' if available, else 'cpu')")
    return parser.parse_args()


def list_images(inputs: list[str]) -> list[str]:
    """The image files named by ``inputs`` (files as given, folders' images sorted)."""
    images: list[str] = []
    for item in inputs:
        if osp.isdir(item):
            images += sorted(osp.join(item, name) for name in os.listdir(item)
                             if name.lower().endswith(IMAGE_SUFFIXES))
        elif osp.isfile(item):
            images.append(item)
        else:
            raise UsageError(f'input {item} not found')
    if not images:
        raise UsageError(f'no images in {" ".join(inputs)} '
                         f'(looked for {", ".join(IMAGE_SUFFIXES)})')
    return images


def main() -> None:
    args = parse_args()
    if not 0 <= args.opacity <= 1:
        raise UsageError(f'--opacity must be within 0..1, got {args.opacity}')
    images = list_images(args.inputs)
    cfg = load_config(args.config)
    check_seg_config(cfg, args.config, 'infer')
    check_arch(cfg)
    check_checkpoint(args.checkpoint, cfg)
    stack_fixes.trust_checkpoint(args.checkpoint)
    written = paint_overlays(cfg, args.checkpoint, images, args.out_dir, args.opacity,
                             args.device or default_device())
    print(f'wrote {len(written)} overlays to {args.out_dir}')


def default_device() -> str:
    import torch
    return 'cuda:0' if torch.cuda.is_available() else 'cpu'


def paint_overlays(cfg: Config, checkpoint: str, images: list[str], out_dir: str,
                   opacity: float,
                   device: str) -> list[str]:
    """Run the model on each image; save prediction overlays; return the written paths."""
    import mmcv
    from mmengine.model import revert_sync_batchnorm
    from mmseg.apis import inference_model, init_model
    from mmseg.visualization import SegLocalVisualizer

    model = init_model(cfg, checkpoint, device=device)
    if device == 'cpu':
        model = revert_sync_batchnorm(model)
    visualizer = SegLocalVisualizer(name='mmvolo_inference', alpha=opacity)
    visualizer.dataset_meta = model.dataset_meta
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for path in images:
        result = inference_model(model, path)
        out_file = osp.join(out_dir, osp.splitext(osp.basename(path))[0] + '.png')
        image = mmcv.imread(path, channel_order='rgb')
        visualizer.add_datasample(osp.basename(path), image, result, draw_gt=False,
                                  show=False, out_file=out_file,
                                  with_labels=min(image.shape[:2]) >= MIN_SIZE_FOR_LABELS)
        written.append(out_file)
    return written


if __name__ == '__main__':
    run_tool(main)
