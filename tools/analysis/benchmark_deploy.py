"""Deployment benchmark: VOLO-D1 and Swin-T UperNet through PyTorch eager, torch.compile,
onnxruntime fp32 and int8, one image end to end, in one process.

    python tools/analysis/benchmark_deploy.py --work-dir work_dirs/bench_deploy
        [--sizes 512x512 1024x2048] [--threads 1 2] [--repeats 3] [--profile N] [--json F]
    python tools/analysis/benchmark_deploy.py --work-dir DIR --dry-run   # tiny, seconds

The work is done by :mod:`mmvolo.analysis.benchmark_deploy`; this file is its command line.
See docs/deploy.md, "Side by side".
"""
from mmvolo.analysis.benchmark_deploy import main
from mmvolo.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
