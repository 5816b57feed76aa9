"""Models: the VOLO backbone and its reusable blocks (registered in mmengine's MODELS)."""
from .arch_zoo import ARCH_ZOO, resolve_arch
from .blocks import Outlooker, VOLOTransformerBlock
from .deformable_mixers import DCNv3Mixer, DeformableOutlook
from .mixer_neck import MixerNeck
from .outlook_attention import OutlookAttention
from .token_mixers import DWConvMixer, Involution, LocalSelfAttention
from .volo import VOLO

__all__ = ['ARCH_ZOO', 'VOLO', 'MixerNeck', 'OutlookAttention', 'Outlooker',
           'VOLOTransformerBlock', 'resolve_arch',
           'DWConvMixer', 'Involution', 'LocalSelfAttention', 'DCNv3Mixer', 'DeformableOutlook']
from . import segmentors  # noqa: E402,F401  (registers BatchedSlideEncoderDecoder; no mmseg import)
