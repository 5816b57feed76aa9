#!/usr/bin/env bash
# Quick start (README command one): from a fresh clone to a trained, tested VOLO segmentor.
#
#   bash tools/quickstart.sh
#
# 1. sets up the environment (tools/setup_env.sh: .venv with pinned dependencies),
# 2. generates the toy dataset in work_dirs/toy_data (if absent),
# 3. trains the toy config (tiny VOLO + UperNet, 64x64, 6 classes) with validation,
# 4. tests the final checkpoint (mIoU on the validation split),
# 5. paints prediction overlays of the validation images,
# and prints where everything went. A few minutes on a 2-core CPU; uses a GPU if present.
# Environment: MMVOLO_STACK (openmmlab | onedl), MMVOLO_VENV (venv path),
# QUICKSTART_WORK_DIR (default work_dirs/quickstart).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
config=configs/volo/volo-toy_upernet_1xb2-800iter_toy-64x64.py
data=work_dirs/toy_data
work="${QUICKSTART_WORK_DIR:-work_dirs/quickstart}"
# shellcheck source=tools/stack_env.sh
source "$root/tools/stack_env.sh"  # MMVOLO_STACK=onedl for the onedl forks
# one thread per process: faster than oversubscribing a small CPU (ignored on GPU)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

step() { printf '\n[quickstart] %s\n' "$*"; }

step "1/5 environment"
bash tools/setup_env.sh

step "2/5 toy dataset"
if [ -d "$data/images/training" ] && [ -d "$data/annotations/validation" ]; then
  echo "reusing $data"
else
  "$py" tools/make_toy_dataset.py "$data"
fi

start=$(date +%s)
step "3/5 training ($config)"
rm -rf "$work"
"$py" tools/train.py "$config" --work-dir "$work"
checkpoint="$(cat "$work/last_checkpoint")"
train_s=$(( $(date +%s) - start ))

step "4/5 testing $checkpoint"
test_log="$work/test_output.txt"
"$py" tools/test.py "$config" "$checkpoint" --work-dir "$work" --out "$work/predictions" \
  2>&1 | tee "$test_log"
miou="$(grep -o 'mIoU: [0-9.]*' "$test_log" | tail -n 1 | cut -d' ' -f2)"

step "5/5 overlays"
"$py" tools/inference.py "$config" "$checkpoint" "$data/images/validation" \
  --out-dir "$work/overlays"
total_s=$(( $(date +%s) - start ))

train_log="$(ls "$work"/*/*.log 2>/dev/null | head -n 1 || true)"
test_json="$(ls "$work"/*/*.json 2>/dev/null | tail -n 1 || true)"
cat <<SUMMARY

[quickstart] done in ${total_s} s (training with validation: ${train_s} s)
  final mIoU (toy validation set, 6 classes): ${miou:-unknown}
  checkpoint:        $checkpoint
  training log:      $train_log
  test metrics:      $test_json
  predicted labels:  $work/predictions/
  colour overlays:   $work/overlays/
Next: docs/training.md (ADE20K / Cityscapes configs, multi-GPU, slurm).
SUMMARY
