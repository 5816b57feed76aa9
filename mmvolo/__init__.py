"""mmvolo: VOLO (Vision Outlooker) for OpenMMLab.

``import mmvolo`` (or ``custom_imports=dict(imports=['mmvolo'])`` in a config) registers
``VOLO``, ``OutlookAttention``, ``Outlooker`` and ``VOLOTransformerBlock`` in mmengine's root
``MODELS`` registry (visible from mmseg, mmpretrain and every other OpenMMLab 2.x package),
mmvolo's optimizer constructor and hooks, and the atomic local file backend. It changes
nothing else in the host stack: the fixes for today's stack are in :mod:`mmvolo.runtime`,
applied where it is imported (mmvolo's tools and configs name it explicitly).
"""
from . import fileio  # noqa: F401  (registers the atomic local file backend)
from .engine import (  # noqa: F401  (registers them)
    AtomicCheckpointHook,
    RNGStateHook,
    VOLOLayerDecayOptimWrapperConstructor,
)
from .models import VOLO, OutlookAttention, Outlooker, VOLOTransformerBlock
from .version import __version__

__all__ = ['VOLO', 'OutlookAttention', 'Outlooker', 'VOLOTransformerBlock', '__version__']
