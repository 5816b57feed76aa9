"""``BatchedSlideEncoderDecoder``: mmseg's ``EncoderDecoder`` with batched sliding windows.

mmseg's ``EncoderDecoder.slide_inference`` runs one forward pass per window position (the
whole image batch at that position). This subclass gathers the windows of every image in the
batch and runs them through ``encode_decode`` ``test_cfg.crop_batch`` crops at a time, then
sums the logits into the same count-normalised map as mmseg's::

    model = dict(type='BatchedSlideEncoderDecoder', ...,
                 test_cfg=dict(mode='slide', crop_size=(512, 1024), stride=(341, 682),
                               crop_batch=3))

The windows are mmseg's exactly (:func:`slide_windows`: border windows are shifted back to stay
inside the image, every window is ``min(crop, image)`` in size) and are summed in mmseg's
order, so the result equals mmseg's up to float rounding of the batched kernels. Without
``crop_batch`` (or with ``mode='whole'``) the model is mmseg's ``EncoderDecoder``.

This module imports mmseg's models: import it only once :mod:`mmvolo.runtime` has run (the
tools and configs do). ``import mmvolo`` registers the name through a lazy builder
(:mod:`mmvolo.models.segmentors`) without importing this module.
"""
from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Any

import torch
from mmseg.models.segmentors import EncoderDecoder
from torch import Tensor

Window = tuple[int, int, int, int]  # y1, y2, x1, x2


def crop_batch_of(test_cfg: Any) -> int | None:
    """``test_cfg.crop_batch`` as an int, None when unset; ValueError (one line) if invalid."""
    value = None if test_cfg is None else test_cfg.get('crop_batch')
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f'test_cfg.crop_batch must be a positive integer (sliding-window crops per forward '
            f'pass), got {value!r}: set e.g. crop_batch=4, or remove it to run one window '
            'position at a time as mmseg does')
    return int(value)


def slide_windows(img_shape: tuple[int, int], crop_size: tuple[int, int],
                  stride: tuple[int, int]) -> Iterator[Window]:
    """mmseg's sliding windows ``(y1, y2, x1, x2)`` over an ``H x W`` image, in its order.

    The grid is ``ceil((H - crop) / stride) + 1`` rows (at least 1), likewise columns; a window
    running past the border is shifted back to end at it (so windows overlap more there), and
    an image smaller than the crop is one window of the whole image.
    """
    h_img, w_img = img_shape
    h_crop, w_crop = crop_size
    h_stride, w_stride = stride
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, h_img)
            x2 = min(w_idx * w_stride + w_crop, w_img)
            yield max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2


def batched_slide_inference(segmentor: EncoderDecoder, inputs: Tensor,
                            batch_img_metas: list[dict], crop_batch: int) -> Tensor:
    """mmseg's ``slide_inference`` with ``crop_batch`` crops per ``encode_decode`` call.

    The crops of all images (window-major, then image: mmseg's order, so every pixel sums its
    windows in the same order) are cut in chunks of ``crop_batch``; all crops have the same
    shape, ``min(crop, image)``. Like mmseg, ``batch_img_metas[0]['img_shape']`` is left set
    to the crop shape; each call gets one meta per crop (its image's, ``img_shape`` = crop).
    """
    test_cfg = segmentor.test_cfg
    batch_size, _, h_img, w_img = inputs.shape
    windows = list(slide_windows((h_img, w_img), test_cfg.crop_size, test_cfg.stride))
    jobs = [(window, index) for window in windows for index in range(batch_size)]
    preds = inputs.new_zeros((batch_size, segmentor.out_channels, h_img, w_img))
    count_mat = inputs.new_zeros((1, 1, h_img, w_img))
    for y1, y2, x1, x2 in windows:
        count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    for start in range(0, len(jobs), crop_batch):
        chunk = jobs[start:start + crop_batch]
        crops = torch.cat([inputs[index:index + 1, :, y1:y2, x1:x2]
                           for (y1, y2, x1, x2), index in chunk])
        crop_shape = crops.shape[2:]
        batch_img_metas[0]['img_shape'] = crop_shape  # as mmseg's slide_inference leaves it
        metas = [{**batch_img_metas[index], 'img_shape': crop_shape} for _, index in chunk]
        crop_logits = segmentor.encode_decode(crops, metas)
        for logits, ((y1, y2, x1, x2), index) in zip(crop_logits, chunk):
            preds[index, :, y1:y2, x1:x2] += logits
    return preds / count_mat


class BatchedSlideEncoderDecoder(EncoderDecoder):
    """mmseg's ``EncoderDecoder``; ``test_cfg.crop_batch`` batches the sliding windows.

    Args: those of ``EncoderDecoder``. ``test_cfg.crop_batch`` (positive int, optional): crops
    per forward pass in ``mode='slide'`` (across the images of the batch too); unset: mmseg's
    ``slide_inference``, one forward per window position. Checked when the model is built.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        crop_batch_of(self.test_cfg)

    def slide_inference(self, inputs: Tensor, batch_img_metas: list[dict]) -> Tensor:
        crop_batch = crop_batch_of(self.test_cfg)
        if crop_batch is None:
            return super().slide_inference(inputs, batch_img_metas)
        return batched_slide_inference(self, inputs, batch_img_metas, crop_batch)
