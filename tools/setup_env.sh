#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install mmvolo into it, editable.
#
#   bash tools/setup_env.sh            # venv in ./.venv (override with MMVOLO_VENV=path)
#
# torch: if the venv has no torch yet, installs $MMVOLO_TORCH_SPEC (default: torch 2.14.1 +
# torchvision 0.29.1, which pip takes from this project's build machines' local wheel cache).
# Bring your own torch by installing it into the venv first (or pointing MMVOLO_VENV at an
# environment that has one): an importable torch is never replaced.
# mmcv: a full mmcv (with compiled ops) already present is kept; otherwise mmcv-lite is installed.
# All version pins live in setup.cfg.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MMVOLO_VENV:-$root/.venv}"
torch_spec="${MMVOLO_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
py="$venv/bin/python"
stamp="$venv/.mmvolo-installed"

if [ ! -x "$py" ]; then
  echo "[mmvolo] creating virtual environment in $venv"
  python3 -m venv "$venv"
fi
log="$venv/install.log"
pip_install() {  # quiet pip; the full output goes to $log and is shown only on failure
  if ! "$py" -m pip install --disable-pip-version-check "$@" >>"$log" 2>&1; then
    echo "[mmvolo] pip install $* failed; last lines of $log:" >&2
    tail -n 25 "$log" >&2
    exit 1
  fi
}

want="$(cat "$root/setup.cfg")$torch_spec"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$py" -c "import mmvolo" 2>/dev/null; then
  echo "[mmvolo] environment up to date: $venv"
  exit 0
fi

pip_install --upgrade pip 'setuptools<82' wheel
if ! "$py" -c "import torch, torchvision" 2>/dev/null; then
  echo "[mmvolo] installing $torch_spec"
  # shellcheck disable=SC2086
  pip_install $torch_spec
fi
extras="test"
if ! "$py" -c "import mmcv._ext" 2>/dev/null; then
  extras="lite,$extras"
fi
echo "[mmvolo] installing mmvolo[$extras] (editable) and its pinned dependencies"
pip_install --no-build-isolation -e "$root[$extras]"
"$py" -c "import mmvolo" || { echo "[mmvolo] install failed: 'import mmvolo' does not work in $venv" >&2; exit 1; }
printf '%s' "$want" > "$stamp"
echo "[mmvolo] environment ready: $venv"
