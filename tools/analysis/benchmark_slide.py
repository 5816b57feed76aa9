"""Sliding-window inference: mmseg's ``slide_inference`` vs batched windows (``crop_batch``).

    python tools/analysis/benchmark_slide.py --device cuda --crop-batch 1 3 9
    python tools/analysis/benchmark_slide.py --device cpu --repeats 1 --warmup 0 --json s.json

The work is done by :mod:`mmvolo.analysis.benchmark_slide`; this file is its command line.
"""
from mmvolo.analysis.benchmark_slide import main
from mmvolo.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
