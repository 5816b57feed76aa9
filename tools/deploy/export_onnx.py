"""Export a segmentor (VOLO backbone + decode head) to ONNX and check it in onnxruntime.

    python tools/deploy/export_onnx.py CONFIG [CHECKPOINT] --out FILE.onnx [--shape H W]
        [--dynamic] [--opset 18] [--tolerance 1e-4] [--benchmark N] [--trust]
        [--cfg-options KEY=VALUE ...]

The work is done by :mod:`mmvolo.deploy.onnx_export`; this file is its command line.
See docs/deploy.md.
"""
from mmvolo.cli import run_tool
from mmvolo.deploy.onnx_export import main

if __name__ == '__main__':
    run_tool(main)
