"""Colour overlays painted as ``tools/inference.py`` paints them (mmseg's SegLocalVisualizer).

``SegLocalVisualizer._draw_sem_seg``: a mask holds each present class's palette colour (RGB;
ids beyond the classes stay black), class names are drawn on it in boxes (OpenCV Hershey
font) when the image's short side is >= 128 pixels (tools/inference.py's rule), and the
result is ``(image * (1 - opacity) + mask * opacity).astype(uint8)`` over the whole image.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: Class names are written on the overlay only for images at least this large (pixels).
MIN_SIZE_FOR_LABELS = 128


def paint_overlay(image_rgb: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                  palette: Sequence[tuple[int, int, int]], opacity: float,
                  with_labels: bool | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB + (H, W) class ids -> (H, W, 3) uint8 RGB overlay."""
    if with_labels is None:
        with_labels = min(image_rgb.shape[:2]) >= MIN_SIZE_FOR_LABELS
    ids = np.unique(labels)[::-1]
    ids = ids[ids < len(classes)].astype(np.int64)
    colors = [tuple(int(v) for v in palette[i]) for i in ids]
    mask = np.zeros_like(image_rgb, dtype=np.uint8)
    for label, color in zip(ids, colors):
        mask[labels == label, :] = color
    if with_labels:
        mask = _draw_names(mask, labels, ids, colors, classes)
    return (image_rgb * (1 - opacity) + mask * opacity).astype(np.uint8)


def _draw_names(mask: np.ndarray, labels: np.ndarray, ids: np.ndarray, colors: list,
                classes: Sequence[str]) -> np.ndarray:
    """Each class name in a box of its colour at its centre, as SegLocalVisualizer does."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.05
    font_scale = min(mask.shape[0], mask.shape[1]) / (25 / scale)
    thin = mask.shape[0] < 300 or mask.shape[1] < 300
    thickness = rectangle_thickness = 1 if thin else 2
    for label, color in zip(ids, colors):
        x, y = _center(labels == label)
        text = classes[label]
        (width, height), baseline = cv2.getTextSize(text, font, font_scale, thickness)
        corner = (x + width + baseline, y + height + baseline)
        mask = cv2.rectangle(np.ascontiguousarray(mask), (x, y), corner, color, -1)
        mask = cv2.rectangle(mask, (x, y), corner, (0, 0, 0), rectangle_thickness)
        mask = cv2.putText(mask, text, (x, y + height), font, font_scale, (255, 255, 255),
                           thickness, 2)
    return mask


def _center(region: np.ndarray) -> tuple[int, int]:
    """SegLocalVisualizer's label spot: the middle pixel of the row holding most pixels."""
    loc = np.argwhere(region)  # row-major order, as its sorted() gives
    rows, counts = np.unique(loc[:, 0], return_counts=True)
    row = loc[loc[:, 0] == rows[counts.argmax()]]
    y, x = row[len(row) // 2]
    return int(x), int(y)


def default_palette(count: int) -> list:
    """mmseg's palette for classes without one (BaseSegDataset: seed 42, randint 0..254)."""
    return np.random.RandomState(42).randint(0, 255, size=(count, 3)).tolist()
