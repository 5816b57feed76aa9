"""Make a training checkpoint publishable: weights and meta only, named by its hash.

    python tools/misc/publish_model.py IN_FILE OUT_FILE

The work is done by :mod:`mmvolo.cli.publish_model`; this file is its command line.
See docs/weights.md.
"""
from mmvolo.cli import run_tool
from mmvolo.cli.publish_model import main

if __name__ == '__main__':
    run_tool(main)
