"""``python -m mmvolo.env``: which stack is installed, its versions, and the fixes in force.

Prints a few lines, e.g.::

    stack: openmmlab (mmengine 0.10.7, mmcv-lite 2.1.0, mmsegmentation 1.2.2, mmpretrain 1.2.0)
    torch 2.14.1, torchvision 0.29.1, python 3.11.7, CUDA: not available
    mmcv compiled ops: absent
    runtime fixes in force after `import mmvolo.runtime`:
      mmcv-ext-standin: mmcv has no compiled ops and mmsegmentation 1.2 imports mmcv.ops ...
    host hook: installed (.../site-packages/mmvolo-host.pth), enabled: lazy fixes for ...

``python -m mmvolo.env --install-hook`` / ``--remove-hook`` install or remove the host hook
(:mod:`mmvolo._host_hook`: mmvolo's fixes for mmseg's own tools and ``mim run``) in this
interpreter's site-packages; ``tools/setup_env.sh`` installs it.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import sysconfig

from . import _host_hook
from .stack import active_stack, installed, mixed_stacks, stack_packages


def describe_stack() -> list[str]:
    """The report's lines (importing :mod:`mmvolo.runtime`, which applies the fixes)."""
    stack = active_stack()
    if stack is None:
        return ['stack: none (neither mmengine nor onedl-mmengine is installed); run '
                'tools/setup_env.sh (MMVOLO_STACK=onedl for the onedl forks)']
    packages = ', '.join(map(str, stack_packages(stack)))
    lines = [f'stack: {stack} ({packages})']
    mixed = mixed_stacks()
    if mixed:
        lines.append(f'WARNING: both stacks provide {", ".join(mixed)}: a broken environment; '
                     'make a fresh venv with tools/setup_env.sh')
    import torch

    from . import runtime
    from .runtime.mmcv_ext import has_compiled_mmcv_ops

    cuda = f'CUDA {torch.version.cuda}' if torch.cuda.is_available() else 'CUDA: not available'
    lines.append(f'torch {torch.__version__}, torchvision {installed("torchvision")}, '
                 f'python {platform.python_version()}, {cuda}')
    ops = 'present' if has_compiled_mmcv_ops() else 'absent (mmcv-lite or onedl-mmcv without ops)'
    lines.append(f'mmcv compiled ops: {ops}')
    lines.append('runtime fixes in force after `import mmvolo.runtime`:')
    lines += [f'  {name}: {reason}' for name, reason in runtime.ACTIVE_FIXES.items()]
    lines.append('  (tools, when CUDA is absent: gloo process group, SyncBN -> BN, DDP without '
                 'device ids)')
    return lines + describe_host_hook()


def hook_pth_path() -> str:
    """Where the host hook's ``.pth`` goes: this interpreter's site-packages."""
    return os.path.join(sysconfig.get_paths()['purelib'], _host_hook.PTH_NAME)


def describe_host_hook() -> list[str]:
    """The report's lines on the host hook: installed or not, enabled, applied here."""
    path = hook_pth_path()
    if not os.path.isfile(path):
        return ['host hook: not installed (mmseg\'s own tools and `mim run mmseg` then fail '
                'with mmcv-lite / on onedl); install it: python -m mmvolo.env --install-hook']
    state = 'enabled' if _host_hook.enabled() else f'disabled here by {_host_hook.ENV_VAR}=0'
    lines = [f'host hook: installed ({path}), {state}: lazy fixes for processes that do not '
             'import mmvolo (mmseg\'s own tools, mim run): mmcv-ext-standin when mmcv._ext is '
             "imported and absent, mmseg-config-scope when mmengine's config utils load; remove: "
             'python -m mmvolo.env --remove-hook']
    loaded = sys.modules.get(_host_hook.FIXES_MODULE)
    if loaded is not None:
        lines += [f'  applied in this process: {name}: {reason}'
                  for name, reason in loaded.APPLIED.items()]
    return lines


def install_hook() -> str:
    """Write the host hook's ``.pth`` (atomically) pointing at this mmvolo's hook file."""
    from .fileio import write_text_atomic

    path = hook_pth_path()
    write_text_atomic(_host_hook.pth_line(), path)
    return f'host hook installed: {path} (disable per process with {_host_hook.ENV_VAR}=0)'


def remove_hook() -> str:
    """Delete the host hook's ``.pth``; nothing else was installed."""
    path = hook_pth_path()
    if not os.path.isfile(path):
        return f'host hook not installed ({path} absent): nothing to remove'
    os.remove(path)
    return f'host hook removed: {path}'


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m mmvolo.env', description=__doc__.split(
        '\n')[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--install-hook', action='store_true',
                       help="install the host hook (mmvolo's fixes for mmseg's own tools)")
    group.add_argument('--remove-hook', action='store_true', help='remove the host hook')
    args = parser.parse_args(argv)
    if args.install_hook:
        print(install_hook())
    elif args.remove_hook:
        print(remove_hook())
    else:
        print('\n'.join(describe_stack()))


if __name__ == '__main__':
    main()
