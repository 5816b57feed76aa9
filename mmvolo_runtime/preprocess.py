"""The image side of mmseg's test-time inference, in numpy and OpenCV.

mmseg's ``inference_model`` runs the config's test pipeline (mmcv ``Resize``) and the
``SegDataPreProcessor``: BGR->RGB, ``(x - mean) / std`` in float32, then (only when its
``test_cfg`` asks) right/bottom padding to a fixed size or a multiple, with ``pad_val``.
"""
from __future__ import annotations

import cv2
import numpy as np

from .metadata import INTERPOLATIONS, ResizeStep

Pair = tuple[int, int]


def rescale_size(height: int, width: int, scale: Pair) -> Pair:
    """mmcv's ``rescale_size`` for a keep-ratio ``Resize``: the (H, W) after resizing.

    scale factor = min(long / max(h, w), short / min(h, w)) with long, short the sides of
    ``scale``; each side becomes ``int(side * factor + 0.5)`` (mmcv's ``_scale_size``).
    """
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


def resized_shape(height: int, width: int, resize: ResizeStep | None) -> Pair:
    """(H, W) of an ``height x width`` image after the test pipeline's Resize (if any)."""
    if resize is None:
        return height, width
    if resize.keep_ratio:
        return rescale_size(height, width, resize.scale)
    return resize.scale[1], resize.scale[0]  # mmcv's scale is (w, h)


def resize_image(image: np.ndarray, resize: ResizeStep | None) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8, as mmcv's ``imrescale``/``imresize`` (cv2)."""
    height, width = resized_shape(*image.shape[:2], resize)
    if (height, width) == image.shape[:2]:
        return image  # mmcv calls cv2.resize to the same size too: that is a copy
    return cv2.resize(image, (width, height), interpolation=INTERPOLATIONS[resize.interpolation])


def normalise(image: np.ndarray, mean, std, bgr_to_rgb: bool) -> np.ndarray:
    """(h, w, 3) uint8 BGR -> (3, h, w) float32 ``(x - mean) / std`` (RGB if ``bgr_to_rgb``)."""
    chw = image.transpose(2, 0, 1)
    if bgr_to_rgb and chw.shape[0] == 3:
        chw = chw[::-1]
    data = chw.astype(np.float32)
    if len(mean):
        data = (data - np.asarray(mean, np.float32)[:, None, None]) \
            / np.asarray(std, np.float32)[:, None, None]
    return np.ascontiguousarray(data)


def test_padded_shape(height: int, width: int, size: Pair | None,
                      divisor: int | None) -> Pair:
    """(H, W) after the data_preprocessor's test padding (mmseg's ``stack_batch``)."""
    if size is not None:
        return max(height, size[0]), max(width, size[1])
    if divisor is not None and divisor > 1:
        return -(-height // divisor) * divisor, -(-width // divisor) * divisor
    return height, width


def pad_to(data: np.ndarray, height: int, width: int, value: float) -> np.ndarray:
    """(C, h, w) -> (C, height, width): right/bottom padding with ``value`` (h, w <= those)."""
    if data.shape[1:] == (height, width):
        return data
    out = np.full((data.shape[0], height, width), value, dtype=data.dtype)
    out[:, :data.shape[1], :data.shape[2]] = data
    return out
