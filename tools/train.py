"""Train a segmentor (mmseg's train CLI, with mmvolo's modules and runtime fixes).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CHECKPOINT]] [--amp] [--trust]
                          [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

The work is done by :mod:`mmvolo.cli.train`; this file is its command line.
See docs/training.md.
"""
from mmvolo.cli import run_tool
from mmvolo.cli.train import main

if __name__ == '__main__':
    run_tool(main)
