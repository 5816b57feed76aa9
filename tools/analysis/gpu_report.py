"""One prepared GPU run: VOLO's outlook attention checked and measured, op to training.

    python tools/analysis/gpu_report.py --out DIR [--stages NAME ...] [--profile] [--dry-run]

The work is done by :mod:`mmvolo.analysis.gpu_report`; this file is its command line.
"""
from mmvolo.analysis.gpu_report import main
from mmvolo.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
