"""Benchmark of the local token mixers against OutlookAttention at VOLO-D1 stage-1 shape.

    python tools/analysis/benchmark_mixers.py --device cpu --repeats 3 --json m.json

The work is done by :mod:`mmvolo.analysis.benchmark_mixers`; this file is its command line.
"""
from mmvolo.analysis.benchmark_mixers import main
from mmvolo.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
