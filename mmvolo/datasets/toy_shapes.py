"""``ToyShapesDataset``: the generated quick-start dataset, read in ADE20K's layout."""
from __future__ import annotations

from typing import Any

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from .toy_generator import TOY_CLASSES, TOY_PALETTE


@DATASETS.register_module()
class ToyShapesDataset(BaseSegDataset):
    """Shapes and textures on a textured ground (see :mod:`mmvolo.datasets.toy_generator`).

    Same conventions as ``ADE20KDataset``: ``images/{training,validation}/*.jpg``,
    ``annotations/{training,validation}/*.png``, label 0 = unlabelled (ignored,
    ``reduce_zero_label=True``), classes 1..N stored as 0..N-1 after the reduction.
    """
    METAINFO = dict(classes=TOY_CLASSES, palette=[list(color) for color in TOY_PALETTE])

    def __init__(self, img_suffix: str = '.jpg', seg_map_suffix: str = '.png',
                 reduce_zero_label: bool = True, **kwargs: Any) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)
