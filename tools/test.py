"""Test (and evaluate) a segmentor checkpoint (mmseg's test CLI, with mmvolo's fixes).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out DIR] [--show]
                         [--show-dir DIR] [--wait-time S] [--tta] [--trust] [--cfg-options ...]
                         [--launcher {none,pytorch,slurm,mpi}]

The work is done by :mod:`mmvolo.cli.test`; this file is its command line.
See docs/training.md.
"""
from mmvolo.cli import run_tool
from mmvolo.cli.test import main

if __name__ == '__main__':
    run_tool(main)
