"""Segment images with an mmvolo ONNX export: onnxruntime, numpy and OpenCV only (no torch).

    python tools/deploy/infer_onnx.py MODEL.onnx IMAGE_OR_FOLDER ... --out-dir DIR
        [--overlays] [--opacity 0.5] [--threads N] [--window-batch 4]

The work is done by :mod:`mmvolo_runtime.cli`; this file is its command line (it needs
``pip install 'mmvolo[deploy-runtime]'``). See docs/deploy.md, "Run the exported file".
"""
from mmvolo_runtime.cli import run

if __name__ == '__main__':
    run()
