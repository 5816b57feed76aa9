"""Datasets: the generated toy segmentation set behind the quick start.

- :mod:`.toy_generator` writes it (numpy and OpenCV only).
- :mod:`.toy_shapes` reads it: importing it registers ``ToyShapesDataset`` in mmseg's
  ``DATASETS`` (configs list it in ``custom_imports``).
"""
