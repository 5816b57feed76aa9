"""Confusion matrix of ``tools/test.py --out`` predictions against the dataset's labels.

The logic behind ``tools/analysis/confusion_matrix.py`` (a thin command line over :func:`main`).

    python tools/analysis/confusion_matrix.py CONFIG PRED_DIR SAVE_DIR
        [--split test|val] [--title T] [--color-theme winter] [--cfg-options ...]

PRED_DIR: the label PNGs ``tools/test.py CONFIG CKPT --out PRED_DIR`` (or mmseg's test.py)
wrote, one ``<image stem>.png`` per image. mmseg's ``analysis_tools/confusion_matrix.py``
fails on ADE20K-style data (``reduce_zero_label=True``: "cannot reshape array of size 251
into shape (6,6)"): test.py writes those predictions as labels + 1 (the dataset's own label
values), and it subtracts 1 from the already reduced ground truth instead of from them. Here
the ground truth comes through the config's dataset with mmseg's ``LoadAnnotations`` (reduced
as in testing), each prediction is matched by image name and mapped back (``- 1`` when
``reduce_zero_label``), and the pixels the metric ignores are left out; per-class IoU and
mIoU come from mmseg's ``IoUMetric`` (the numbers ``tools/test.py`` prints).

Writes ``SAVE_DIR/confusion_matrix.csv`` (pixel counts; rows: ground truth, columns:
prediction) and ``SAVE_DIR/confusion_matrix.png`` (rows normalised to 100 %), atomically.
"""
from __future__ import annotations

import argparse
import csv
import io
import os.path as osp

import numpy as np

from mmvolo.cli import UsageError, load_config
from mmvolo.cli.arguments import ToolArgumentParser, add_cfg_options
from mmvolo.cli.output_paths import check_output_folders
from mmvolo.fileio import write_bytes_atomic, write_text_atomic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ToolArgumentParser(description='Confusion matrix of test.py --out predictions')
    parser.add_argument('config', help='the config the predictions were made with')
    parser.add_argument('prediction_path', help='folder of label PNGs from test.py --out')
    parser.add_argument('save_dir', help='where confusion_matrix.csv and .png go')
    parser.add_argument('--split', choices=('test', 'val'), default='test',
                        help="the config's dataloader the predictions are of (default test)")
    parser.add_argument('--title', default='Normalized Confusion Matrix')
    parser.add_argument('--color-theme', default='winter', help='matplotlib colour map')
    add_cfg_options(parser)
    return parser.parse_args(argv)


def label_dataset(cfg, split: str):
    """The split's dataset with only mmseg's ``LoadAnnotations`` as its pipeline: items
    carry ``gt_seg_map`` at full size, reduced as in testing, and ``img_path``."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    loader = cfg.get(f'{split}_dataloader')
    if not isinstance(loader, dict) or not isinstance(loader.get('dataset'), dict):
        raise UsageError(f'the config has no {split}_dataloader.dataset; pass --split '
                         f'{"val" if split == "test" else "test"} or another config')
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    return DATASETS.build(dict(loader['dataset'], pipeline=[dict(type='LoadAnnotations')]))


def read_prediction(path: str, shape: tuple[int, ...], reduce_zero_label: bool,
                    num_classes: int) -> np.ndarray:
    """A test.py ``--out`` PNG as class indices (``- 1`` when the dataset reduces label 0)."""
    from PIL import Image

    if not osp.isfile(path):
        raise UsageError(f'no prediction {path}: write them with tools/test.py CONFIG CKPT '
                         '--out PRED_DIR (same config and split)')
    with Image.open(path) as image:
        pred = np.asarray(image).astype(np.int64)
    if pred.shape != shape:
        raise UsageError(f'prediction {path} is {pred.shape[0]}x{pred.shape[1]} but its label '
                         f'map {shape[0]}x{shape[1]}: predictions of another dataset?')
    if reduce_zero_label:
        pred = pred - 1
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise UsageError(f'prediction {path} holds labels outside this config\'s '
                         f'{num_classes} classes (made with another config, or '
                         f'reduce_zero_label={not reduce_zero_label}?)')
    return pred


def confusion_and_areas(dataset, prediction_path: str) -> tuple[np.ndarray, list]:
    """The ``(n, n)`` pixel confusion matrix and mmseg's per-image areas for IoUMetric."""
    import torch
    from mmseg.evaluation.metrics import IoUMetric

    classes = dataset.metainfo['classes']
    n = len(classes)
    matrix = np.zeros((n, n), dtype=np.int64)
    areas = []
    for index in range(len(dataset)):
        item = dataset[index]
        label = item['gt_seg_map'].astype(np.int64)
        stem = osp.splitext(osp.basename(item['img_path']))[0]
        pred = read_prediction(osp.join(prediction_path, f'{stem}.png'), label.shape,
                               dataset.reduce_zero_label, n)
        valid = label != dataset.ignore_index
        matrix += np.bincount(n * label[valid] + pred[valid],
                              minlength=n * n).reshape(n, n)
        areas.append(IoUMetric.intersect_and_union(torch.from_numpy(pred),
                                                   torch.from_numpy(label), n,
                                                   dataset.ignore_index))
    return matrix, areas


def iou_per_class(areas: list) -> np.ndarray:
    """Per-class IoU (%) by mmseg's ``IoUMetric.total_area_to_metrics``."""
    from mmseg.evaluation.metrics import IoUMetric

    totals = [sum(area[i] for area in areas) for i in range(4)]
    metrics = IoUMetric.total_area_to_metrics(*totals, metrics=['mIoU'])
    return np.asarray(metrics['IoU'], dtype=np.float64) * 100


def matrix_csv(matrix: np.ndarray, classes: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(['ground truth \\ prediction', *classes])
    for name, row in zip(classes, matrix):
        writer.writerow([name, *row.tolist()])
    return out.getvalue()


def matrix_png(matrix: np.ndarray, classes: list[str], title: str, cmap: str) -> bytes:
    """The row-normalised matrix (%) as a PNG (matplotlib, no window)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = matrix.sum(axis=1, keepdims=True)
    percent = np.divide(matrix * 100.0, rows, out=np.zeros(matrix.shape), where=rows > 0)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 * n + 3, 1.2 * n + 2), dpi=100)
    image = ax.imshow(percent, cmap=plt.get_cmap(cmap), vmin=0, vmax=100)
    fig.colorbar(image, ax=ax)
    ax.set_title(title)
    ax.set_xlabel('Prediction')
    ax.set_ylabel('Ground truth')
    ax.set_xticks(range(n), classes, rotation=45, ha='right')
    ax.set_yticks(range(n), classes)
    for gt in range(n):
        for pred in range(n):
            ax.text(pred, gt, f'{percent[gt, pred]:.1f}', ha='center', va='center',
                    color='w' if percent[gt, pred] > 50 else 'k', fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png')
    plt.close(fig)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not osp.isdir(args.prediction_path):
        raise UsageError(f'prediction folder {args.prediction_path} not found: write it with '
                         'tools/test.py CONFIG CKPT --out PRED_DIR')
    if osp.exists(args.save_dir) and not osp.isdir(args.save_dir):
        raise UsageError(f'save_dir {args.save_dir} is a file; pass a folder')
    cfg = load_config(args.config, args.cfg_options)
    check_output_folders(cfg, {'save_dir': args.save_dir})
    dataset = label_dataset(cfg, args.split)
    classes = list(dataset.metainfo['classes'])
    matrix, areas = confusion_and_areas(dataset, args.prediction_path)
    ious = iou_per_class(areas)
    write_text_atomic(matrix_csv(matrix, classes), osp.join(args.save_dir,
                                                            'confusion_matrix.csv'))
    write_bytes_atomic(matrix_png(matrix, classes, args.title, args.color_theme),
                       osp.join(args.save_dir, 'confusion_matrix.png'))
    for name, iou in zip(classes, ious):
        print(f'{name:>20}  IoU {iou:6.2f}')
    print(f'mIoU {np.nanmean(ious):.2f} over {len(areas)} images; wrote '
          f'{osp.join(args.save_dir, "confusion_matrix.csv")} and .png')
