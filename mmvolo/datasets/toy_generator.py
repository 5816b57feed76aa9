"""A small, learnable, deterministic segmentation dataset in ADE20K's folder layout.

Each image is a textured ground (class 1) carrying a few objects of five classes that differ
in shape, colour and texture. A one-pixel outline around every object is left unlabelled
(label 0, ignored under ADE20K's ``reduce_zero_label`` convention), as annotators leave
uncertain boundaries. Everything derives from one seed: same seed, same files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

#: Class names, in label order 1..N (label 0 = unlabelled).
TOY_CLASSES = ('ground', 'disc', 'box', 'triangle', 'stripes', 'checker')
#: Overlay colour of each class (RGB).
TOY_PALETTE = ((120, 120, 120), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25),
               (240, 50, 230))
#: Base colour of each object class (BGR, as written by OpenCV); per-object jitter is added.
_OBJECT_BGR = {'disc': (40, 40, 200), 'box': (60, 170, 50), 'triangle': (190, 100, 20),
               'stripes': (30, 210, 230), 'checker': (200, 60, 200)}
SPLITS = {'training': 'train', 'validation': 'val'}


@dataclass(frozen=True)
class ToySpec:
    """Size of the generated dataset."""
    num_train: int = 240
    num_val: int = 40
    size: int = 64
    max_objects: int = 6
    seed: int = 0


def generate_toy_dataset(out_dir: str | os.PathLike, spec: ToySpec = ToySpec()) -> Path:
    """Write the dataset under ``out_dir`` (ADE20K layout) and return that path.

    Layout: ``images/{training,validation}/toy_XXXXX.jpg`` and
    ``annotations/{training,validation}/toy_XXXXX.png`` (uint8 labels 0..N).
    """
    root = Path(out_dir)
    counts = {'training': spec.num_train, 'validation': spec.num_val}
    for split_index, (split, count) in enumerate(counts.items()):
        (root / 'images' / split).mkdir(parents=True, exist_ok=True)
        (root / 'annotations' / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            rng = np.random.default_rng([spec.seed, split_index, index])
            image, label = make_sample(rng, spec.size, spec.max_objects)
            name = f'toy_{SPLITS[split]}_{index:05d}'
            cv2.imwrite(str(root / 'images' / split / f'{name}.jpg'), image,
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(root / 'annotations' / split / f'{name}.png'), label)
    return root


def make_sample(rng: np.random.Generator, size: int, max_objects: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """One (BGR uint8 image, uint8 label map) pair of ``size`` x ``size`` pixels."""
    image = _ground_texture(rng, size)
    label = np.full((size, size), 1, np.uint8)
    outline = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(2, max_objects + 1))):
        class_index = int(rng.integers(2, len(TOY_CLASSES) + 1))
        name = TOY_CLASSES[class_index - 1]
        mask = _SHAPES[name](rng, size)
        image[mask] = _object_pixels(rng, name, mask)
        label[mask] = class_index
        outline &= ~mask
        outline |= _outline(mask)
    label[outline] = 0
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), label


def _ground_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency brownish/greyish blotches plus grain."""
    coarse = rng.uniform(0, 1, (max(size // 8, 2), max(size // 8, 2), 1))
    blotches = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)[..., None]
    base = rng.uniform(90, 150) + rng.uniform(-15, 15, 3)
    tint = np.array([0.85, 1.0, 1.1])  # BGR: slightly warm
    return np.clip(base * tint * (0.75 + 0.5 * blotches), 0, 255).astype(np.float64)


def _object_pixels(rng: np.random.Generator, name: str, mask: np.ndarray) -> np.ndarray:
    color = np.array(_OBJECT_BGR[name], np.float64) + rng.uniform(-25, 25, 3)
    ys, xs = np.nonzero(mask)
    if name == 'stripes':
        period = int(rng.integers(4, 7))
        dark = ((xs + ys) // (period // 2)) % 2 == 0
        pixels = np.where(dark[:, None], color * 0.25, color)
    elif name == 'checker':
        cell = int(rng.integers(3, 5))
        dark = ((xs // cell) + (ys // cell)) % 2 == 0
        pixels = np.where(dark[:, None], np.array([245.0, 245.0, 245.0]), color)
    else:
        pixels = np.repeat(color[None], len(xs), axis=0)
    return np.clip(pixels, 0, 255)


def _outline(mask: np.ndarray) -> np.ndarray:
    kernel = np.ones((3, 3), np.uint8)
    dilated = cv2.dilate(mask.astype(np.uint8), kernel)
    eroded = cv2.erode(mask.astype(np.uint8), kernel)
    return (dilated - eroded).astype(bool)


def _center_radius(rng: np.random.Generator, size: int) -> tuple[int, int, int]:
    # smallest radius size // 5 (12 px at 64), not size // 6: small boxes were the class that
    # stayed merged into triangles for some seeds; bigger ones split early on both stacks
    radius = int(rng.integers(size // 5, size // 3 + 1))
    cx, cy = (int(v) for v in rng.integers(radius // 2, size - radius // 2, 2))
    return cx, cy, radius


def _disc(rng: np.random.Generator, size: int) -> np.ndarray:
    cx, cy, radius = _center_radius(rng, size)
    return _draw(size, lambda canvas: cv2.circle(canvas, (cx, cy), radius, 1, -1))


def _polygon(rng: np.random.Generator, size: int, corners: int, scale: float = 1.0
             ) -> np.ndarray:
    cx, cy, radius = _center_radius(rng, size)
    radius = radius * scale
    start = rng.uniform(0, 2 * np.pi)
    angles = start + np.arange(corners) * 2 * np.pi / corners
    points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
    return _draw(size, lambda canvas: cv2.fillPoly(canvas, [points.round().astype(np.int32)], 1))


def _ellipse(rng: np.random.Generator, size: int) -> np.ndarray:
    cx, cy, radius = _center_radius(rng, size)
    axes = (radius, max(int(radius * rng.uniform(0.5, 0.9)), 3))
    angle = float(rng.uniform(0, 180))
    return _draw(size, lambda canvas: cv2.ellipse(canvas, (cx, cy), axes, angle, 0, 360, 1, -1))


def _draw(size: int, paint: Callable[[np.ndarray], object]) -> np.ndarray:
    canvas = np.zeros((size, size), np.uint8)
    paint(canvas)
    return canvas.astype(bool)


_SHAPES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    'disc': _disc,
    'box': lambda rng, size: _polygon(rng, size, 4),
    # a triangle covers 0.65x the area of a square of the same circumradius: 1.25x the
    # radius evens that out, else triangles are the rarest class and learned last
    'triangle': lambda rng, size: _polygon(rng, size, 3, scale=1.25),
    'stripes': lambda rng, size: _polygon(rng, size, 4),
    'checker': _ellipse,
}
