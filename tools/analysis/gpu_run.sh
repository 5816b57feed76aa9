#!/usr/bin/env bash
# The one command for the offline GPU machine: installs the carried OpenMMLab wheels, then runs
# tools/analysis/gpu_report.py under a time limit, everything tee'd into the output folder.
#
#   bash tools/analysis/gpu_run.sh [gpu_report.py arguments, e.g. --stages kernels ops]
#
# Output folder: $OUT if set, else work_dirs/gpu_report; the report goes to <folder>/gpu_report/
# (report.md, report.json, training logs) and this script's output to <folder>/gpu_run.log.
# Wheels: `bash ../shared/bin/offline-wheels` on a machine with internet fills .whl/; carry it.
# GPU_REPORT_TIMEOUT (seconds, default 510) bounds the whole run; each stage also has its own
# budget inside gpu_report.py, and the training subprocesses their own timeouts.
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
folder=${OUT:-work_dirs/gpu_report}
mkdir -p "$folder" || exit 1
log="$folder/gpu_run.log"
limit=${GPU_REPORT_TIMEOUT:-510}

{
  echo "[gpu_run] $(date -u '+%Y-%m-%d %H:%M:%S UTC') in $PWD, output in $folder, limit ${limit}s"
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1 || true
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || { echo "[gpu_run] installing .whl/*.whl failed"; exit 1; }
  else
    echo "[gpu_run] no .whl/ folder: using the installed packages"
  fi
  export PYTHONPATH=$PWD:/tmp/site
  timeout --kill-after=20 "$limit" python3 tools/analysis/gpu_report.py \
    --out "$folder/gpu_report" "$@"
  status=$?
  [ "$status" -eq 124 ] && echo "[gpu_run] stopped by the ${limit}s limit; the report has what ran"
  echo "[gpu_run] exit status $status"
  exit "$status"
} 2>&1 | tee "$log"
