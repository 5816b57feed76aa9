"""Confusion matrix of ``tools/test.py --out`` predictions against the dataset's labels.

    python tools/analysis/confusion_matrix.py CONFIG PRED_DIR SAVE_DIR
        [--split test|val] [--title T] [--color-theme winter] [--cfg-options ...]

The work is done by :mod:`mmvolo.analysis.confusion_matrix`; this file is its command line.
See docs/training.md.
"""
from mmvolo.analysis.confusion_matrix import main
from mmvolo.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
