"""Which OpenMMLab stack is installed: upstream OpenMMLab or the maintained onedl forks.

Both install the same import names (``mmengine``, ``mmcv``, ``mmseg``, ``mmpretrain``,
``mmdet``) from different distributions. The stack is read from package metadata, without
importing any of them, so the runtime fixes can decide what the stack needs before mmseg is
imported.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

#: Stack name -> import name -> distributions that provide it there.
STACKS: dict[str, dict[str, tuple[str, ...]]] = {
    'openmmlab': {
        'mmengine': ('mmengine',),
        'mmcv': ('mmcv', 'mmcv-lite'),
        'mmseg': ('mmsegmentation',),
        'mmpretrain': ('mmpretrain',),
        'mmdet': ('mmdet',),
    },
    'onedl': {
        'mmengine': ('onedl-mmengine',),
        'mmcv': ('onedl-mmcv',),
        'mmseg': ('onedl-mmsegmentation',),
        'mmpretrain': ('onedl-mmpretrain',),
        'mmdet': ('onedl-mmdetection',),
    },
}


@dataclass(frozen=True)
class Package:
    """One installed distribution of the stack."""
    module: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f'{self.distribution} {self.version}'


def installed(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def stack_packages(stack: str) -> list[Package]:
    """The distributions of ``stack`` that are installed, one per import name."""
    found = []
    for module, distributions in STACKS[stack].items():
        for distribution in distributions:
            version = installed(distribution)
            if version is not None:
                found.append(Package(module, distribution, version))
                break
    return found


def active_stack() -> str | None:
    """'openmmlab' or 'onedl': the stack whose mmengine is installed (None: neither)."""
    for stack, modules in STACKS.items():
        if any(installed(name) for name in modules['mmengine']):
            return stack
    return None


def provider(module: str) -> Package | None:
    """Which installed distribution provides import name ``module`` (e.g. 'mmseg')."""
    for stack in STACKS:
        for package in stack_packages(stack):
            if package.module == module:
                return package
    return None


def mixed_stacks() -> list[str]:
    """Import names provided by both stacks at once (a broken environment), e.g. ['mmseg']."""
    upstream = {package.module for package in stack_packages('openmmlab')}
    forks = {package.module for package in stack_packages('onedl')}
    return sorted(upstream & forks)
