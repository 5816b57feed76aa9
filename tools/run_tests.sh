#!/usr/bin/env bash
# Set up the environment (tools/setup_env.sh) and run the whole test suite on CPU.
#   bash tools/run_tests.sh                      # upstream OpenMMLab stack (.venv)
#   MMVOLO_STACK=onedl bash tools/run_tests.sh   # the onedl forks (.venv-onedl)
# Extra arguments go to pytest, e.g. `bash tools/run_tests.sh -k outlook`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/tools/setup_env.sh"
# shellcheck source=tools/stack_env.sh
source "$root/tools/stack_env.sh"
cd "$root"
echo "[mmvolo] testing on the $stack stack ($venv)"
# one pytest worker per core, at most 4 (each holds a few GB at its peak); a test file runs
# whole in one worker, so module fixtures (checkpoints, trained toy models) are built once.
# MMVOLO_TEST_WORKERS=0 runs everything in this process.
# Byte-compile the checkout first: with PYTHONDONTWRITEBYTECODE set (as on CI) every one of
# the suite's ~80 fresh interpreters would otherwise recompile mmvolo (~1.5 s each).
"$py" -m compileall -q -j 0 mmvolo tools >/dev/null
workers="${MMVOLO_TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}"
exec "$py" -m pytest -q -p no:cacheprovider -n "$workers" --dist loadfile tests "$@"
