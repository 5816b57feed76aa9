#!/usr/bin/env bash
# Set up the environment (tools/setup_env.sh) and run the whole test suite on CPU.
# Extra arguments go to pytest, e.g. `bash tools/run_tests.sh -k outlook`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/tools/setup_env.sh"
venv="${MMVOLO_VENV:-$root/.venv}"
cd "$root"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
