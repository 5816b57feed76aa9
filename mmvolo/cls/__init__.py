"""VOLO classification in mmpretrain (imports mmpretrain; ``import mmvolo`` does not).

Classification configs load it with ``custom_imports=dict(imports=['mmvolo', 'mmvolo.cls'])``;
it registers :class:`VOLOClsHead` in mmengine's root ``MODELS`` (visible from mmpretrain's
``ImageClassifier`` under ``default_scope='mmpretrain'``).
"""
from .class_attention import ClassAttention, ClassBlock
from .head import VOLOClsHead

__all__ = ['ClassAttention', 'ClassBlock', 'VOLOClsHead']
