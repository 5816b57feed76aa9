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
# pytest-xdist: one worker per core (measured on 2 cores: 149 s against 158 s with a third
# worker, which only adds its own collection and contention), at most 4 (each holds a few GB
# at its peak), one intra-op thread each (OMP_NUM_THREADS, inherited by the tools the tests
# start: more threads than cores only spin); a test file runs whole in one worker, so module
# fixtures (checkpoints, trained toy models) are built once. MMVOLO_TEST_WORKERS=0 runs
# everything in this process, with torch's default threads.
cores="$(nproc)"
workers="${MMVOLO_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}"
if [ "$workers" != 0 ]; then
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi
# --no-loadscope-reorder: xdist would otherwise hand out files by test count, not in the
# conftest's costliest-first order (so the long integration tests ran last, one per core).
exec "$py" -m pytest -q -p no:cacheprovider -n "$workers" --dist loadfile --no-loadscope-reorder \
  tests "$@"
