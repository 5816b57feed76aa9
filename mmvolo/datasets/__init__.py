"""Datasets: the generated toy segmentation set behind the quick start.

Importing this package registers ``ToyShapesDataset`` in mmseg's ``DATASETS`` (it imports
mmseg); the generator (:mod:`mmvolo.datasets.toy_generator`) needs only numpy and OpenCV.
"""
from .toy_shapes import ToyShapesDataset

__all__ = ['ToyShapesDataset']
