"""Segment images with a trained checkpoint and save colour overlays.

    python tools/inference.py CONFIG CHECKPOINT INPUT [INPUT ...] --out-dir DIR
                              [--opacity 0.5] [--device cpu|cuda:0] [--trust]

The work is done by :mod:`mmvolo.cli.inference`; this file is its command line.
See docs/training.md.
"""
from mmvolo.cli import run_tool
from mmvolo.cli.inference import main

if __name__ == '__main__':
    run_tool(main)
