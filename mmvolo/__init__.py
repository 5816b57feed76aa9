"""mmvolo: VOLO (Vision Outlooker) for OpenMMLab.

``import mmvolo`` (or ``custom_imports=dict(imports=['mmvolo'])`` in a config) registers
``VOLO``, ``OutlookAttention``, ``Outlooker`` and ``VOLOTransformerBlock`` in mmengine's root
``MODELS`` registry, visible from mmseg, mmpretrain and every other OpenMMLab 2.x package, and
applies the stack fixes of :mod:`mmvolo.stack_fixes` that must precede importing mmseg.
"""
from .stack_fixes import apply_import_time_fixes

apply_import_time_fixes()

from .engine import VOLOLayerDecayOptimWrapperConstructor  # noqa: E402, F401  (registers it)
from .models import VOLO, OutlookAttention, Outlooker, VOLOTransformerBlock  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ['VOLO', 'OutlookAttention', 'Outlooker', 'VOLOTransformerBlock', '__version__']
