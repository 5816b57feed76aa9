"""Convert official (sail-sg) or timm VOLO weights into a tensor-only mmvolo checkpoint.

    python tools/model_converters/volo2mmseg.py SRC DST [--keep-head] [--img-size H [W]]
        [--ema] [--safetensors] [--trust] [--verify]

The work is done by :mod:`mmvolo.cli.volo2mmseg`; this file is its command line.
See docs/weights.md.
"""
from mmvolo.cli import run_tool
from mmvolo.cli.volo2mmseg import main

if __name__ == '__main__':
    run_tool(main)
