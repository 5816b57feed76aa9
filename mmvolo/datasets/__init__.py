"""Datasets: the generated toy sets and the checks of real ones (docs/datasets.md).

- :mod:`.toy_generator` writes the quick start's toy set, ADE20K layout (numpy and OpenCV only);
  :mod:`.toy_cityscapes` writes the same shapes in Cityscapes' layout and label ids.
- :mod:`.toy_shapes` reads it: importing it registers ``ToyShapesDataset`` in mmseg's
  ``DATASETS`` (configs list it in ``custom_imports``).
- :mod:`.preflight` checks a config's datasets before training (files, pairing, label values,
  sizes); :mod:`.loader_settings` fixes or refuses dataloader settings PyTorch rejects late.
"""
