"""mmvolo_runtime: run an mmvolo ONNX export on images, with numpy, OpenCV and onnxruntime only.

    from mmvolo_runtime import OnnxSegmentor
    labels, logits = OnnxSegmentor('model.onnx').predict(cv2.imread('image.jpg'))

A separate top-level package, not ``mmvolo.deploy``: ``import mmvolo.<anything>`` runs
``mmvolo/__init__.py``, which imports torch and registers mmseg modules. A deployment machine
installs ``pip install 'mmvolo[deploy-runtime]'`` (onnxruntime, numpy, opencv) and imports only
this package; nothing here imports torch, mmseg, mmengine, mmcv or mmvolo. The exporter
(:mod:`mmvolo.deploy.onnx_export`) imports :mod:`.metadata` from here, so the metadata keys and
their version live in one place. See docs/deploy.md, "Run the exported file".
"""
from __future__ import annotations

from typing import Any

# Exported names and their modules: imported on first use (PEP 562), so that the stdlib-only
# helpers (``mmvolo_runtime.inputs``, ``.errors``) import without onnxruntime or OpenCV.
_EXPORTS = {'METADATA_VERSION': 'metadata', 'ModelInfo': 'metadata',
            'OnnxSegmentor': 'segmentor', 'UsageError': 'errors'}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    from importlib import import_module

    value = getattr(import_module(f'.{_EXPORTS[name]}', __name__), name)
    globals()[name] = value
    return value
