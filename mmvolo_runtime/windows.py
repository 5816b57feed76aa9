"""mmseg's sliding-window grid (``EncoderDecoder.slide_inference``)."""
from __future__ import annotations

Window = tuple[int, int, int, int]  # y1, y2, x1, x2


def slide_windows(height: int, width: int, crop: tuple[int, int],
                  stride: tuple[int, int]) -> list[Window]:
    """The windows ``(y1, y2, x1, x2)`` over an ``height x width`` image, in mmseg's order.

    ``h_grids = max(H - h_crop + h_stride - 1, 0) // h_stride + 1`` rows (likewise columns); a
    window running past the border is shifted back to end at it; an image smaller than the
    crop gives windows of the image's size in that dimension.
    """
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, height)
            x2 = min(w_idx * w_stride + w_crop, width)
            windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows
