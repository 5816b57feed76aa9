"""onedl-mmengine cannot resolve ``mmseg::`` config bases of its own fork."""
from __future__ import annotations

from ..stack import provider

#: The config scope mmvolo's configs inherit from.
MMSEG_SCOPE = 'mmseg'


def needs_mmseg_scope_mapping() -> bool:
    """True when mmengine's scope table names a distribution other than the installed one."""
    package = provider(MMSEG_SCOPE)
    if package is None:
        return False
    from mmengine.config import utils

    return utils.MODULE2PACKAGE.get(MMSEG_SCOPE) != package.distribution


def map_mmseg_config_scope() -> bool:
    """Make ``'mmseg::_base_/...'`` config bases resolve on the onedl stack.

    mmengine resolves ``mmseg::`` through ``MODULE2PACKAGE``, which maps the import name
    ``mmseg`` to the distribution ``mmsegmentation``; onedl-mmengine keeps that table as is,
    so with onedl-mmsegmentation installed every config fails to load ("mmsegmentation is not
    installed"). The entry is pointed at the distribution that is installed. This happens
    when ``mmvolo.runtime`` is imported, i.e. before mmvolo's tools load a config; mmseg's own
    ``tools/train.py`` and ``mim`` parse the config before any plugin code runs and cannot be
    served this way (an onedl-mmengine bug: its table lacks its own forks).

    Returns:
        True if the table was changed.
    """
    if not needs_mmseg_scope_mapping():
        return False
    from mmengine.config import utils

    utils.MODULE2PACKAGE[MMSEG_SCOPE] = provider(MMSEG_SCOPE).distribution
    return True
