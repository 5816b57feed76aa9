#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install mmvolo into it, editable.
#
#   bash tools/setup_env.sh                      # upstream OpenMMLab in ./.venv
#   MMVOLO_STACK=onedl bash tools/setup_env.sh   # the maintained onedl forks in ./.venv-onedl
#
# MMVOLO_VENV=path overrides the venv. A venv that already holds one stack keeps it: asking
# for the other there is refused (the two stacks own the same import folders).
# torch: if the venv has no torch yet, installs $MMVOLO_TORCH_SPEC (default: torch 2.14.1 +
# torchvision 0.29.1, which pip takes from this project's build machines' local wheel cache).
# Bring your own torch by installing it into the venv first: an importable torch is never
# replaced.
# mmcv (upstream stack): a full mmcv (with compiled ops) already present is kept; otherwise
# mmcv-lite is installed. All version pins live in setup.cfg, per stack.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=tools/stack_env.sh
source "$root/tools/stack_env.sh"
torch_spec="${MMVOLO_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
stamp="$venv/.mmvolo-installed"

if [ ! -x "$py" ]; then
  echo "[mmvolo] creating virtual environment in $venv"
  python3 -m venv "$venv"
fi
held="$(venv_stack)"
if [ "$held" != none ] && [ "$held" != "$stack" ]; then
  echo "error: $venv holds the $held stack; MMVOLO_STACK=$stack would install the other on top" \
       "(a broken environment): use MMVOLO_STACK=$held, or another MMVOLO_VENV" >&2
  exit 2
fi
log="$venv/install.log"
pip_install() {  # quiet pip; the full output goes to $log and is shown only on failure
  if ! "$py" -m pip install --disable-pip-version-check "$@" >>"$log" 2>&1; then
    echo "[mmvolo] pip install $* failed; last lines of $log:" >&2
    tail -n 25 "$log" >&2
    exit 1
  fi
}

want="$stack$(cat "$root/setup.cfg" "$root/tools/setup_env.sh")$torch_spec"
# up to date: same stamp, and the packages are still there (found, not imported: importing
# torch would cost the README's test command 2-3 s every run)
installed='import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, sys.argv[1:])))'
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
   (cd / && "$py" -c "$installed" mmvolo torch mmengine mmseg 2>/dev/null); then
  echo "[mmvolo] environment up to date: $venv ($stack stack)"
  exit 0
fi

pip_install --upgrade pip wheel
if ! "$py" -c "import torch, torchvision" 2>/dev/null; then
  echo "[mmvolo] installing $torch_spec"
  # shellcheck disable=SC2086
  pip_install $torch_spec
fi
if [ "$stack" = onedl ]; then
  extras="onedl,cls-onedl,det-onedl,deploy,host-tools,test"
else
  pip_install 'setuptools<82'  # mmengine resolves `mmseg::` bases through pkg_resources
  extras="openmmlab,cls,det,deploy,host-tools,test"
  if ! "$py" -c "import mmcv._ext" 2>/dev/null; then
    extras="lite,$extras"
  fi
fi
echo "[mmvolo] installing mmvolo[$extras] (editable) and its pinned dependencies ($stack stack)"
if [ "$stack" = onedl ]; then
  # with build isolation: onedl-mmcv's sdist then skips its compiled ops (seconds); without
  # it, it tries to compile them against this torch and fails (-std=c++17 vs ATen's C++20)
  pip_install -e "$root[$extras]"
else
  pip_install --no-build-isolation -e "$root[$extras]"
fi
if [ "$stack" != onedl ]; then
  # openmim for `mim search mmvolo` (tests/test_mim_metadata.py), with --no-deps as
  # docs/training.md says (its requirements downgrade requests/rich/tqdm in place). Not on
  # onedl: mim 0.3.9 needs pkg_resources, which that stack's setuptools no longer has, and
  # resolves `mim run mmseg` to the distribution mmsegmentation, offering to install upstream
  # mmseg over the forks.
  pip_install --no-deps 'openmim==0.3.9'
  pip_install pandas tabulate colorama requests model-index
fi
"$py" -c "import mmvolo.runtime" || {
  echo "[mmvolo] install failed: 'import mmvolo.runtime' does not work in $venv" >&2; exit 1; }
# the host hook (mmvolo-host.pth): mmvolo's fixes for mmseg's own tools and `mim run mmseg`,
# which run before any plugin code (docs/training.md); `python -m mmvolo.env --remove-hook`
# takes it out, MMVOLO_HOST_HOOK=0 disables it per process
"$py" -m mmvolo.env --install-hook >/dev/null || {
  echo "[mmvolo] install failed: could not install the host hook in $venv" >&2; exit 1; }
printf '%s' "$want" > "$stamp"
echo "[mmvolo] environment ready: $venv ($stack stack)"
