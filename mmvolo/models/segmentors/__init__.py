"""Segmentors: ``BatchedSlideEncoderDecoder`` (batched sliding-window inference).

The class subclasses mmseg's ``EncoderDecoder``, and importing mmseg's models needs the stack
fixes of :mod:`mmvolo.runtime` (mmcv-lite), which ``import mmvolo`` does not apply. So
``import mmvolo`` registers, under the name ``'BatchedSlideEncoderDecoder'`` in mmengine's root
``MODELS``, a builder that imports :mod:`.batched_slide` when a model is built (mmseg is
loaded by then). ``builder.segmentor_class()`` gives the class itself (mmvolo's config checks
use it); so does ``mmvolo.models.segmentors.BatchedSlideEncoderDecoder``.
"""
from __future__ import annotations

from typing import Any

from ...registry import MODELS

__all__ = ['BatchedSlideEncoderDecoder', 'build_batched_slide_encoder_decoder']


def _segmentor_class() -> type:
    from .batched_slide import BatchedSlideEncoderDecoder

    return BatchedSlideEncoderDecoder


def build_batched_slide_encoder_decoder(**kwargs: Any) -> Any:
    """Build a ``BatchedSlideEncoderDecoder`` (``type='BatchedSlideEncoderDecoder'``)."""
    return _segmentor_class()(**kwargs)


build_batched_slide_encoder_decoder.segmentor_class = _segmentor_class
MODELS.register_module('BatchedSlideEncoderDecoder', module=build_batched_slide_encoder_decoder)


def __getattr__(name: str) -> Any:
    if name == 'BatchedSlideEncoderDecoder':
        return _segmentor_class()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
