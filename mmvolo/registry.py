"""Where mmvolo registers its modules.

Everything is registered in mmengine's root ``MODELS`` registry. Every OpenMMLab 2.x package
(mmseg, mmpretrain, mmdet, ...) builds models through a child of that registry, and a child
looks a name up in its ancestors when it does not hold it, so ``type='VOLO'`` resolves under
``default_scope='mmseg'`` and ``default_scope='mmpretrain'`` alike, and ``import mmvolo`` needs
to import neither package.
"""
from mmengine.registry import MODELS

__all__ = ['MODELS']
