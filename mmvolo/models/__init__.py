"""Models: the VOLO backbone and its reusable blocks (registered in mmengine's MODELS)."""
from .arch_zoo import ARCH_ZOO, resolve_arch
from .blocks import Outlooker, VOLOTransformerBlock
from .outlook_attention import OutlookAttention
from .volo import VOLO

__all__ = ['ARCH_ZOO', 'VOLO', 'OutlookAttention', 'Outlooker', 'VOLOTransformerBlock',
           'resolve_arch']
