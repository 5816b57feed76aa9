"""Token mixers of the local-attention family, drop-in alternatives to OutlookAttention.

All three have OutlookAttention's interface: ``embed_dims`` first, keyword arguments
otherwise, ``channels_last`` (tokens (B, H, W, C), else (B, C, H, W)), an output projection
``proj``, stride 1 only (a token mixer returns the input's shape), any H, W >= 1. Each wraps
one functional op of :mod:`mmvolo.ops` (``impl='auto'|'reference'|'fast'``; None = 'auto' =
'fast'). Defaults fit VOLO-D1 stage 1 (C=192, 6 heads):

======================  ==========================================================  ======
module                  token mixing (defaults)                                     params
======================  ==========================================================  ======
Involution              per-pixel KxK kernel from the pixel's own token, one per    51.6k
                        group of 16 channels (K=3, G=12)
LocalSelfAttention      softmax over the KxK window, row/column relative            147.9k
                        embeddings (K=7, 6 heads)
DWConvMixer             depthwise KxK conv (K=3) + pointwise ``proj``               39.0k
OutlookAttention        (VOLO's; K=3, stride 2, 6 heads)                            167.7k
======================  ==========================================================  ======
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from ..ops.dispatch import ImplRegistry
from ..ops.dwconv import DEPTHWISE_CONV_IMPLS, depthwise_conv
from ..ops.involution import INVOLUTION_IMPLS, involution
from ..ops.local_attention import LOCAL_ATTENTION_IMPLS, local_attention
from ..registry import MODELS
from ..utils.validation import (
    check_arg,
    check_args,
    divisor_of,
    exactly,
    int_at_least,
    int_in,
    odd_int,
)

#: Involution's default channels per group (the paper's ``group_channels``).
GROUP_CHANNELS = 16
#: LocalSelfAttention's default channels per head (VOLO-D1 stage 1: 192 / 6 heads).
HEAD_DIMS = 32


#: The arguments every mixer checks alike (:func:`mmvolo.utils.validation.check_args`).
COMMON_RULES = {
    'embed_dims': int_at_least(1),
    'kernel_size': odd_int(),
    'stride': exactly(1, "only stride=1 is supported (a token mixer returns its input's "
                         'shape)'),
}


def _check_common(name: str, embed_dims: int, kernel_size: int, stride: int,
                  impl: str | None, impls: ImplRegistry) -> None:
    check_args(name, COMMON_RULES, dict(embed_dims=embed_dims, kernel_size=kernel_size,
                                        stride=stride))
    impls.check_name(impl)


def divisor_of_default_groups(embed_dims: int) -> int:
    """Rule: embed_dims splits into Involution's default groups of GROUP_CHANNELS."""
    if embed_dims % GROUP_CHANNELS:
        raise ValueError(f'does not split into groups of {GROUP_CHANNELS} channels (the '
                         'default); pass groups=G with embed_dims % G == 0')
    return embed_dims


def even_head_dim(embed_dims: int) -> Callable[[int], int]:
    """Rule for LocalSelfAttention's num_heads: an even head dim (half row, half column)."""

    def rule(num_heads: int) -> int:
        head_dim = embed_dims // num_heads
        if head_dim % 2:
            raise ValueError(f'head dim {head_dim} (embed_dims / num_heads) must be even (half '
                             'row, half column offsets); change num_heads')
        return num_heads

    return rule


class _TokenMixer(BaseModule):
    """Layout handling shared by the mixers: ``mix`` sees channels-last tokens."""

    channels_last: bool

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            layout = '(B, H, W, C)' if self.channels_last else '(B, C, H, W)'
            raise ValueError(f'{type(self).__name__}: expected a 4-d {layout} input, got '
                             f'shape {tuple(x.shape)}')
        if not self.channels_last:
            x = x.permute(0, 2, 3, 1).contiguous()
        out = self.mix(x)
        return out if self.channels_last else out.permute(0, 3, 1, 2)


@MODELS.register_module()
class Involution(_TokenMixer):
    """Involution (Li et al., CVPR 2021) as a token mixer: every pixel generates its own KxK
    kernel, shared by the C/G channels of each of G groups, and applies it to its zero-padded
    KxK neighbourhood (:func:`mmvolo.ops.involution`); then a linear ``proj``.

    Kernel generation: the paper's conv1x1 -> BN -> ReLU -> conv1x1 becomes, on channels-last
    tokens, ``span(GELU(reduce(x)))`` with ``reduce = Linear(C, C // reduction)`` and
    ``span = Linear(C // reduction, G*K*K)``: no BatchNorm (the block's LayerNorm already
    normalises the tokens, and BN would couple the samples of a batch inside a mixer), GELU
    as in VOLO's MLPs. The paper applies the kernels to x itself (no value projection);
    ``proj`` is added so the module is a drop-in token mixer.

    ``num_heads`` is deliberately not an argument: a VOLO/MixerNeck config's heads are not
    passed on (:func:`~mmvolo.models.mixer_builder.build_token_mixer` passes only accepted
    names); ``groups`` is this mixer's own knob.

    Args:
        embed_dims: channels C.
        kernel_size: window K, odd. Default: 3.
        groups: G, C must divide by it. Default: None, i.e. C // 16 (the paper's 16 channels
            per group; 12 at C=192).
        reduction: kernel-generator bottleneck ratio r (hidden C // r). Default: 4.
        stride: must be 1. Default: 1.
        proj_drop_rate: dropout after ``proj``. Default: 0.
        channels_last: (B, H, W, C) in and out if True, else (B, C, H, W). Default: True.
        impl: 'auto'/None (= 'fast'), 'fast' or 'reference'. Default: None.
        init_cfg: mmengine init config. Default: None.

    Shapes:
        x: (B, H, W, C) (or (B, C, H, W)), any H, W >= 1 -> same shape.
    """

    def __init__(self, embed_dims: int, kernel_size: int = 3, groups: int | None = None,
                 reduction: int = 4, stride: int = 1, proj_drop_rate: float = 0.,
                 channels_last: bool = True, impl: str | None = None,
                 init_cfg: dict | list | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        name = type(self).__name__
        _check_common(name, embed_dims, kernel_size, stride, impl, INVOLUTION_IMPLS)
        if groups is None:
            check_arg('embed_dims', embed_dims, divisor_of_default_groups, name)
            groups = embed_dims // GROUP_CHANNELS
        groups = check_arg('groups', groups, divisor_of(embed_dims, f'embed_dims={embed_dims}'),
                           name)
        reduction = check_arg('reduction', reduction, int_in(1, embed_dims), name)
        self.embed_dims, self.kernel_size, self.groups = embed_dims, kernel_size, groups
        self.reduction, self.stride = reduction, stride
        self.channels_last, self.impl = channels_last, impl
        self.reduce = nn.Linear(embed_dims, embed_dims // reduction)
        self.act = nn.GELU()
        self.span = nn.Linear(embed_dims // reduction, groups * kernel_size * kernel_size)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel kernels (B, H, W, G*K*K) (group-major) from tokens (B, H, W, C)."""
        return self.span(self.act(self.reduce(x)))

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        out = involution(x, self.kernels(x), self.kernel_size, self.groups, impl=self.impl)
        return self.proj_drop(self.proj(out))


@MODELS.register_module()
class LocalSelfAttention(_TokenMixer):
    """Local self-attention (SASA, Ramachandran et al., NeurIPS 2019) as a token mixer: the
    query of each pixel attends over the keys/values of its KxK neighbourhood, with relative
    position embeddings split into row and column offsets (:func:`mmvolo.ops.local_attention`;
    logit = q . (k + r) * d**-0.5, r = concat(rel_h[row offset], rel_w[column offset]) over
    the two halves of each head's channels). Neighbours outside the image are masked out of
    the softmax, not attended as zeros. Then a linear ``proj``.

    Window: K=7 by default, the paper's best spatial extent (its ablation: 3 < 5 < 7 ~ 9-11);
    K=3 is the cheap setting closest to OutlookAttention's window.

    Args:
        embed_dims: channels C.
        num_heads: heads; C must divide by it and C / heads be even. Default: None, i.e.
            C // 32 (head dim 32: 6 heads at C=192, as VOLO-D1 stage 1).
        kernel_size: window K, odd. Default: 7.
        stride: must be 1. Default: 1.
        qkv_bias: bias in the ``qkv`` linear. Default: False.
        proj_drop_rate: dropout after ``proj``. Default: 0.
        channels_last: (B, H, W, C) in and out if True, else (B, C, H, W). Default: True.
        impl: 'auto'/None (= 'fast'), 'fast' or 'reference'. Default: None.
        init_cfg: mmengine init config. Default: None (``rel_h``/``rel_w`` are drawn from a
            truncated normal, std .02, at construction).

    Shapes:
        x: (B, H, W, C) (or (B, C, H, W)), any H, W >= 1 -> same shape.
    """

    def __init__(self, embed_dims: int, num_heads: int | None = None, kernel_size: int = 7,
                 stride: int = 1, qkv_bias: bool = False, proj_drop_rate: float = 0.,
                 channels_last: bool = True, impl: str | None = None,
                 init_cfg: dict | list | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        name = type(self).__name__
        _check_common(name, embed_dims, kernel_size, stride, impl, LOCAL_ATTENTION_IMPLS)
        if num_heads is None:
            num_heads = max(1, embed_dims // HEAD_DIMS)
        num_heads = check_arg('num_heads', num_heads,
                              divisor_of(embed_dims, f'embed_dims={embed_dims}'), name)
        check_arg('num_heads', num_heads, even_head_dim(embed_dims), name)
        head_dim = embed_dims // num_heads
        self.embed_dims, self.num_heads, self.kernel_size = embed_dims, num_heads, kernel_size
        self.stride, self.channels_last, self.impl = stride, channels_last, impl
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        self.rel_h = nn.Parameter(torch.empty(kernel_size, head_dim // 2))
        self.rel_w = nn.Parameter(torch.empty(kernel_size, head_dim // 2))
        nn.init.trunc_normal_(self.rel_h, std=.02)
        nn.init.trunc_normal_(self.rel_w, std=.02)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.contiguous() for t in self.qkv(x).chunk(3, dim=-1))
        out = local_attention(q * self.scale, k, v, self.rel_h, self.rel_w, self.num_heads,
                              self.kernel_size, impl=self.impl)
        return self.proj_drop(self.proj(out))


@MODELS.register_module()
class DWConvMixer(_TokenMixer):
    """Depthwise KxK convolution (padding K//2, :func:`mmvolo.ops.depthwise_conv`) followed by
    a pointwise linear ``proj``: the convolutional baseline of the family.

    Args:
        embed_dims: channels C.
        kernel_size: window K, odd. Default: 3.
        stride: must be 1. Default: 1.
        bias: bias of the depthwise conv. Default: True.
        proj_drop_rate: dropout after ``proj``. Default: 0.
        channels_last: (B, H, W, C) in and out if True, else (B, C, H, W). Default: True.
        impl: 'auto'/None (= 'fast', ``F.conv2d``), 'fast' or 'reference'. Default: None.
        init_cfg: mmengine init config. Default: None.

    Shapes:
        x: (B, H, W, C) (or (B, C, H, W)), any H, W >= 1 -> same shape.
    """

    def __init__(self, embed_dims: int, kernel_size: int = 3, stride: int = 1,
                 bias: bool = True, proj_drop_rate: float = 0., channels_last: bool = True,
                 impl: str | None = None, init_cfg: dict | list | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        _check_common(type(self).__name__, embed_dims, kernel_size, stride, impl,
                      DEPTHWISE_CONV_IMPLS)
        self.embed_dims, self.kernel_size, self.stride = embed_dims, kernel_size, stride
        self.channels_last, self.impl = channels_last, impl
        self.dwconv = nn.Conv2d(embed_dims, embed_dims, kernel_size, padding=kernel_size // 2,
                                groups=embed_dims, bias=bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        out = depthwise_conv(x, self.dwconv.weight, self.dwconv.bias, impl=self.impl)
        return self.proj_drop(self.proj(out))


__all__ = ['DWConvMixer', 'Involution', 'LocalSelfAttention']
