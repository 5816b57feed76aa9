"""Static int8 quantization (QDQ, per-channel weights) of an mmvolo ONNX export, calibrated on
images through the runtime's own pipeline and checked against the fp32 file before writing.

    python tools/deploy/quantize_onnx.py MODEL.onnx --calibrate DIR --num N --out OUT.onnx
        [--holdout DIR] [--labels DIR] [--min-agreement 0.99] [--threads N]

The work is done by :mod:`mmvolo_runtime.quantize`; this file is its command line (it needs
onnxruntime, numpy, OpenCV and onnx; no torch). See docs/deploy.md, "int8".
"""
from mmvolo_runtime.quantize import run

if __name__ == '__main__':
    run()
