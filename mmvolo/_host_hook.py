"""The host hook: mmvolo's two lazy fixes for Python processes that never import mmvolo.

mmseg's own tools (``<mmseg>/.mim/tools/...``, ``mim run mmseg NAME``) import ``mmseg.models``
or parse a config before a config's ``custom_imports`` can bring :mod:`mmvolo.runtime`, so
they fail on today's stacks for reasons mmvolo.runtime fixes too late there:

* ``mmcv-ext-standin``: mmcv-lite has no ``mmcv._ext``, yet upstream mmseg 1.2 (and mmdet)
  import ``mmcv.ops`` unguarded ("No module named 'mmcv._ext'").
* ``mmseg-config-scope``: onedl-mmengine maps ``mmseg::`` config bases to the distribution
  ``mmsegmentation``, absent on the onedl stack ("mmsegmentation is not installed").

``tools/setup_env.sh`` installs ``mmvolo-host.pth`` into the venv's site-packages (``python -m
mmvolo.env --install-hook`` / ``--remove-hook``; this module writes its line). Python runs that
line at every interpreter start: it puts one small finder (:func:`pth_line`) at the front of
``sys.meta_path``; nothing else happens at start (no file read, no torch/mmengine; measured
cost in docs/training.md). The finder acts on two imports only, and only when they happen,
through ``mmvolo/_host_fixes.py`` (loaded by path then, without importing the mmvolo package):

* importing ``mmcv._ext`` when no other finder has it and a package that imports ``mmcv.ops``
  unguarded is installed: a stand-in module whose ops raise a RuntimeError naming the fix when
  called (as :mod:`mmvolo.runtime.mmcv_ext` installs; a probe such as
  ``importlib.util.find_spec('mmcv._ext')`` still gets the truth: no compiled ops);
* executing ``mmengine.config.utils``: ``MODULE2PACKAGE['mmseg']`` is pointed at
  ``onedl-mmsegmentation`` when that, not ``mmsegmentation``, is installed.

``MMVOLO_HOST_HOOK=0`` in the environment disables it (the ``.pth`` line checks it first).
``import mmvolo`` alone still changes nothing: this runs only where the ``.pth`` is installed
and enabled; ``_host_fixes.APPLIED`` records what it did in a process.
"""
from __future__ import annotations

import os

#: The environment variable that disables the hook when set to ``0``.
ENV_VAR = 'MMVOLO_HOST_HOOK'
#: The file setup_env.sh puts into site-packages.
PTH_NAME = 'mmvolo-host.pth'
#: The class name of the hook's finder in ``sys.meta_path``.
FINDER = 'MmvoloHostHook'
#: The module names the hook acts on; any other import costs it one lookup.
WATCHED = ('mmcv._ext', 'mmengine.config.utils')
#: The fixes themselves (read only when a watched module is imported), and their name.
FIXES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), '_host_fixes.py')
FIXES_MODULE = '_mmvolo_host_fixes'


def enabled(environ: dict | None = None) -> bool:
    """False when ``MMVOLO_HOST_HOOK=0`` (or ``false``/``no``/``off``)."""
    value = (environ if environ is not None else os.environ).get(ENV_VAR, '1')
    return value.strip().lower() not in ('0', 'false', 'no', 'off')


def pth_line(fixes_file: str = FIXES_FILE) -> str:
    """The ``.pth`` line: unless disabled, put a finder at the front of ``sys.meta_path``
    that loads ``fixes_file`` only when a :data:`WATCHED` module is imported.

    The finder is the few lines below, compiled from the ``.pth`` itself (reading and
    compiling a module file at every start cost ~1 ms more where no bytecode is cached). A
    fixes file that is gone (mmvolo uninstalled) makes the finder do nothing; a failing fix
    prints one line naming how to disable the hook, and the import goes on without it.
    """
    code = f'''import sys
class {FINDER}:
    watched = {WATCHED!r}
    def find_spec(self, name, path=None, target=None):
        if name not in self.watched:
            return None
        fixes = sys.modules.get({FIXES_MODULE!r})
        try:
            if fixes is None:
                import importlib.util as u, os
                if not os.path.isfile({fixes_file!r}):
                    return None
                spec = u.spec_from_file_location({FIXES_MODULE!r}, {fixes_file!r})
                fixes = u.module_from_spec(spec)
                spec.loader.exec_module(fixes)
                sys.modules[{FIXES_MODULE!r}] = fixes
            return fixes.find_spec(name, path, target)
        except Exception as error:
            print(f'mmvolo host hook: {{error}}; disable it with {ENV_VAR}=0 or remove it: '
                  'python -m mmvolo.env --remove-hook', file=sys.stderr)
            return None
any(type(f).__name__ == {FINDER!r} for f in sys.meta_path) or sys.meta_path.insert(0, {FINDER}())
'''
    return (f"import os; os.environ.get({ENV_VAR!r}, '1').strip().lower() in "
            f"('0', 'false', 'no', 'off') or exec({code!r})\n")
