"""Token-mixer ablation on the toy data: train each ``configs/ablation`` config with several

    python tools/analysis/mixer_ablation.py --seeds 0 1 2 --jobs 2 --json ablation.json

The work is done by :mod:`mmvolo.analysis.mixer_ablation`; this file is its command line.
"""
from mmvolo.analysis.mixer_ablation import main
from mmvolo.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
