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
from .errors import UsageError
from .metadata import METADATA_VERSION, ModelInfo
from .segmentor import OnnxSegmentor

__all__ = ['METADATA_VERSION', 'ModelInfo', 'OnnxSegmentor', 'UsageError']
