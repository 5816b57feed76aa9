"""The toy shapes (:mod:`.toy_generator`) in Cityscapes' folder layout and label ids.

Layout (as after mmseg's converter, or as unpacked from the download with
``with_train_ids=False``)::

    leftImg8bit/{train,val}/<city>/<city>_000000_0000NN_leftImg8bit.png
    gtFine/{train,val}/<city>/<city>_000000_0000NN_gtFine_labelTrainIds.png   (0..18, 255)
    gtFine/{train,val}/<city>/<city>_000000_0000NN_gtFine_labelIds.png        (ids 0..33)
    gtFine/{train,val}/<city>/<city>_000000_0000NN_gtFine_polygons.json

Each image is two toy samples side by side (``size`` x ``2 size``, Cityscapes' 1:2 aspect);
the toy classes map onto six of Cityscapes' 19 train ids, the unlabelled outline onto 255.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .toy_generator import make_sample

#: Cityscapes' 19 training classes, in train-id order 0..18.
CITYSCAPES_CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
                      'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car',
                      'truck', 'bus', 'train', 'motorcycle', 'bicycle')
#: Cityscapes label id of each train id (cityscapesscripts' ``labels.py``); 255 -> 0.
TRAIN_ID_TO_LABEL_ID = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
#: Toy label (0 = outline, 1..6 = ground, disc, box, triangle, stripes, checker) -> train id.
TOY_TO_TRAIN_ID = (255, 0, 13, 2, 7, 11, 8)
#: Cities of each split (names as in the real dataset).
CITIES = {'train': ('aachen', 'bremen'), 'val': ('frankfurt',)}


@dataclass(frozen=True)
class ToyCityscapesSpec:
    """Size of the generated set: ``num_train`` / ``num_val`` images of size x 2 size."""
    num_train: int = 8
    num_val: int = 4
    size: int = 32
    max_objects: int = 4
    seed: int = 0
    with_train_ids: bool = True


def generate_toy_cityscapes(out_dir: str | os.PathLike,
                            spec: ToyCityscapesSpec = ToyCityscapesSpec()) -> Path:
    """Write the set under ``out_dir`` (Cityscapes layout, see the module docstring).

    ``with_train_ids=False`` leaves out the ``*_gtFine_labelTrainIds.png`` files (the state
    before mmseg's ``tools/dataset_converters/cityscapes.py``). Returns ``out_dir``.
    """
    root = Path(out_dir)
    for split_index, (split, count) in enumerate((('train', spec.num_train),
                                                  ('val', spec.num_val))):
        cities = CITIES[split]
        for index in range(count):
            city = cities[index % len(cities)]
            rng = np.random.default_rng([spec.seed, 100 + split_index, index])
            image, train_ids = _wide_sample(rng, spec.size, spec.max_objects)
            stem = f'{city}_000000_{index:06d}'
            image_dir = root / 'leftImg8bit' / split / city
            label_dir = root / 'gtFine' / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(image_dir / f'{stem}_leftImg8bit.png'), image)
            cv2.imwrite(str(label_dir / f'{stem}_gtFine_labelIds.png'), label_ids(train_ids))
            (label_dir / f'{stem}_gtFine_polygons.json').write_text(
                json.dumps(polygons(train_ids)))
            if spec.with_train_ids:
                cv2.imwrite(str(label_dir / f'{stem}_gtFine_labelTrainIds.png'), train_ids)
    return root


def _wide_sample(rng: np.random.Generator, size: int, max_objects: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(BGR image, train-id map), ``size`` x ``2 size``: two toy samples side by side."""
    left, right = (make_sample(rng, size, max_objects) for _ in range(2))
    image = np.concatenate([left[0], right[0]], axis=1)
    toy_labels = np.concatenate([left[1], right[1]], axis=1)
    return image, np.asarray(TOY_TO_TRAIN_ID, np.uint8)[toy_labels]


def label_ids(train_ids: np.ndarray) -> np.ndarray:
    """The ``*_gtFine_labelIds.png`` content of a train-id map (255 -> 0, unlabeled)."""
    lookup = np.zeros(256, np.uint8)
    lookup[:len(TRAIN_ID_TO_LABEL_ID)] = TRAIN_ID_TO_LABEL_ID
    return lookup[train_ids]


def polygons(train_ids: np.ndarray) -> dict:
    """A ``*_gtFine_polygons.json`` document (cityscapesscripts' format) of a train-id map:
    one polygon per connected region's outer contour, labelled with the class name."""
    objects = []
    for train_id in np.unique(train_ids):
        if train_id == 255:
            continue
        mask = (train_ids == train_id).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for contour in contours:
            objects.append(dict(label=CITYSCAPES_CLASSES[int(train_id)],
                                polygon=contour[:, 0, :].tolist()))
    height, width = train_ids.shape
    return dict(imgHeight=height, imgWidth=width, objects=objects)
