"""Bilinear resizing of logits as PyTorch's ``F.interpolate(mode='bilinear')`` does it.

mmseg resizes the logits back to the original image size with ``F.interpolate`` (no
antialiasing). OpenCV's bilinear resize agrees for upsampling but not for every downsampling
case, nor with ``align_corners=True``, so this is the PyTorch formula, separable in numpy.
"""
from __future__ import annotations

import numpy as np


def source_weights(in_size: int, out_size: int, align_corners: bool
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two source indices and the weight of the second (float32).

    PyTorch: ``src = (dst + 0.5) * in / out - 0.5`` clamped at 0, or with ``align_corners``
    ``src = dst * (in - 1) / (out - 1)``; ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``.
    """
    dst = np.arange(out_size, dtype=np.float32)
    if align_corners:  # float32 throughout, as PyTorch's CPU kernel computes it
        scale = np.float32((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
        src = dst * scale
    else:
        scale = np.float32(in_size) / np.float32(out_size)
        src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    weight = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, i1, weight


def resize_bilinear(data: np.ndarray, height: int, width: int,
                    align_corners: bool = False) -> np.ndarray:
    """(C, h, w) float32 -> (C, height, width) float32, bilinear as ``F.interpolate``."""
    if data.shape[1:] == (height, width):
        return data
    x0, x1, wx = source_weights(data.shape[2], width, align_corners)
    y0, y1, wy = source_weights(data.shape[1], height, align_corners)
    wy = wy[:, None]
    out = np.empty((data.shape[0], height, width), dtype=np.float32)
    for channel, plane in zip(out, data):  # one channel at a time: its temporaries stay small
        rows = plane[:, x0] * (1 - wx)
        rows += plane[:, x1] * wx
        np.multiply(rows[y0], 1 - wy, out=channel)
        channel += rows[y1] * wy
    return out
