# Sourced by setup_env.sh, run_tests.sh and quickstart.sh: which OpenMMLab stack, which venv.
#
#   MMVOLO_STACK=openmmlab (default) | onedl    the stack to install / use
#   MMVOLO_VENV=path                            the venv (default .venv, or .venv-onedl for onedl)
#
# A venv that already holds one stack keeps it: asking for the other one there is an error,
# never an install on top (both stacks own the same import folders).
# Sets: stack, venv, py.
root="${root:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
stack="${MMVOLO_STACK:-openmmlab}"
case "$stack" in
  openmmlab|upstream) stack=openmmlab; default_venv="$root/.venv" ;;
  onedl) default_venv="$root/.venv-onedl" ;;
  *) echo "error: MMVOLO_STACK=$stack: use openmmlab (upstream OpenMMLab) or onedl (the onedl forks)" >&2
     exit 2 ;;
esac
venv="${MMVOLO_VENV:-$default_venv}"
py="$venv/bin/python"

# the stack a venv holds: openmmlab, onedl or none
venv_stack() {
  [ -x "$py" ] || { echo none; return; }
  "$py" - <<'PY' 2>/dev/null || echo none
from importlib import metadata
def has(name):
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False
print('onedl' if has('onedl-mmengine') else 'openmmlab' if has('mmengine') else 'none')
PY
}
