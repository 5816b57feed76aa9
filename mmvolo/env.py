"""``python -m mmvolo.env``: which stack is installed, its versions, and the fixes in force.

Prints a few lines, e.g.::

    stack: openmmlab (mmengine 0.10.7, mmcv-lite 2.1.0, mmsegmentation 1.2.2, mmpretrain 1.2.0)
    torch 2.14.1, torchvision 0.29.1, python 3.11.7, CUDA: not available
    mmcv compiled ops: absent
    runtime fixes in force after `import mmvolo.runtime`:
      mmcv-ext-standin: mmcv has no compiled ops and mmsegmentation 1.2 imports mmcv.ops ...
"""
from __future__ import annotations

import platform

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
    return lines


def main() -> None:
    print('\n'.join(describe_stack()))


if __name__ == '__main__':
    main()
