"""Model-level benchmark: VOLO UperNet vs mmseg's Swin-T UperNet, same batch, same run.

    python tools/analysis/benchmark_model.py --device cuda --batch 8 --size 512
    python tools/analysis/benchmark_model.py --device cpu --batch 1 --size 256 --repeats 3
    python tools/analysis/benchmark_model.py ... --json results.json
    python tools/analysis/benchmark_model.py --device cpu --batch 1 --modes infer --profile 12

The work is done by :mod:`mmvolo.analysis.benchmark_model`; this file is its command line.
"""
from mmvolo.analysis.benchmark_model import main
from mmvolo.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
