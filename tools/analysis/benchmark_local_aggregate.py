"""Benchmark of mmvolo.ops.local_aggregate against each family member's dedicated op.

    python tools/analysis/benchmark_local_aggregate.py --repeats 5

The work is done by :mod:`mmvolo.analysis.benchmark_local_aggregate`; this file is its
command line.
"""
from mmvolo.analysis.benchmark_local_aggregate import main
from mmvolo.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
