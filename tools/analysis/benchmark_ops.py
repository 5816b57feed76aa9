"""Op-level benchmark of the outlook attention implementations at VOLO stage-1 shapes.

    python tools/analysis/benchmark_ops.py --device cpu --json bench.json

The work is done by :mod:`mmvolo.analysis.benchmark_ops`; this file is its command line.
"""
from mmvolo.analysis.benchmark_ops import main
from mmvolo.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
