"""Deformable token mixers on :func:`mmvolo.ops.local_aggregate` (issue #23, section 5).

Both map tokens (B, H, W, C) -> (B, H, W, C) (``channels_last=False``: (B, C, H, W)) and
are built by ``VOLO(token_mixer=dict(type=...))`` and :class:`~mmvolo.models.MixerNeck`.

* :class:`DeformableOutlook`: VOLO's outlook attention whose K*K input positions move by
  learned offsets. On the grid n of stride S (tokens average-pooled, ceil mode):

      A[n]      = softmax_{k_in}(attn(x_pool[n]) * d**-0.5)      (heads, K*K, K*K)
      off[n]    = offset_scale * offset(x_pool[n])               (Go, K*K, 2), (dy, dx)
      Y[n, k_o] = sum_{k_in} A[n, k_o, k_in] * V(pos0(n, k_in) + off[n, go, k_in])
      out[p]    = proj(sum_{(n, k_o): pos0(n, k_o) = p} Y[n, k_o])

  with V = v(x) sampled bilinearly (zeros outside the image) and pos0 the fixed window
  (``local_aggregate(..., offset=off, normalize='softmax', fold=True)``). ``offset`` is
  zero-initialised, so at init the module is :class:`~mmvolo.models.OutlookAttention`.
* :class:`DCNv3Mixer`: InternImage's DCNv3 operator as a mixer, the family's deformable
  reference point:

      V = input_proj(x);  f = GELU(LN(dwconv(x)))
      M[p] = softmax_k(mask(f[p]))                                (G, K*K)
      out[p] = output_proj(sum_k M[p, g, k] * V(p + D*(k - K//2) + offset_scale*offset(f[p])))

  ``offset`` and ``mask`` zero-initialised (DCNv3's init: uniform weights over the fixed
  window at start).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.local_aggregate import LOCAL_AGGREGATE_IMPLS, local_aggregate
from ..registry import MODELS
from ..utils.validation import (
    check_arg,
    check_args,
    divisor_of,
    exactly,
    int_at_least,
    odd_int,
    positive_number,
    rate,
)
from .token_mixers import GROUP_CHANNELS, _TokenMixer, divisor_of_default_groups

#: DeformableOutlook's argument rules (:func:`mmvolo.utils.validation.check_args`).
DEFORMABLE_OUTLOOK_RULES = {
    'embed_dims': int_at_least(1),
    'kernel_size': odd_int('a centred window, padding K//2, so the grid is ceil(H/S)'),
    'stride': int_at_least(1),
    'attn_drop_rate': rate,
    'proj_drop_rate': rate,
    'offset_scale': positive_number,
}
#: DCNv3Mixer's argument rules.
DCNV3_RULES = {
    'embed_dims': int_at_least(1),
    'kernel_size': odd_int(),
    'dw_kernel_size': odd_int(),
    'dilation': int_at_least(1),
    'stride': exactly(1, "only stride=1 is supported (a token mixer returns its input's "
                         'shape)'),
    'proj_drop_rate': rate,
    'offset_scale': positive_number,
}


class ZeroLinear(nn.Module):
    """``y = x @ weight.T + bias`` with weight (out, in) and bias (out,) starting at zero: the
    offset/mask predictors.

    Deliberately not an ``nn.Linear``: VOLO's and MixerNeck's blanket truncated-normal init of
    every Linear would otherwise draw them away from zero (the state-dict keys are a Linear's).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f'in_features={self.in_features}, out_features={self.out_features}'


@MODELS.register_module()
class DeformableOutlook(_TokenMixer):
    """Outlook attention (VOLO) with learned sampling offsets for the window's K*K inputs.

    Parameters ``v``, ``attn``, ``proj`` are OutlookAttention's (same shapes, same roles);
    ``offset`` = Linear(C, Go*K*K*2) on the pooled tokens, zero at init, so the module then
    equals OutlookAttention with the same weights. With offsets, each window's inputs are
    read at the deformed positions and its outputs folded onto the fixed window.

    Defaults are VOLO's outlooker (K=3, P=1, S=2): ``VOLO(token_mixer=dict(type=
    'DeformableOutlook'))`` gets VOLO's geometry (VOLO passes only ``num_heads`` and
    ``qkv_bias`` to a swapped mixer). Pass ``stride=1`` in a :class:`MixerNeck`.

    Args:
        embed_dims: channels C.
        num_heads: heads; C must divide by it.
        kernel_size: window K, odd. Default: 3.
        padding: must be K // 2 (VOLO's; the window grid is then the pooled ceil(H/S)
            grid). Default: None (K // 2).
        stride: grid stride S. Default: 2.
        offset_groups: Go, groups of channels sharing offsets (C must divide by it).
            Default: None (= num_heads: one set of positions per head).
        offset_scale: multiplies the predicted offsets (pixels). Default: 1.
        qkv_bias: bias in ``v``. Default: False.
        attn_drop_rate: dropout on the softmaxed window weights. Default: 0.
        proj_drop_rate: dropout after ``proj``. Default: 0.
        channels_last: (B, H, W, C) in and out if True, else (B, C, H, W). Default: True.
        impl: ``local_aggregate`` impl, 'auto'/None (= 'fast'), 'fast' or 'reference'.
        init_cfg: mmengine init config. Default: None.

    Shapes:
        x: (B, H, W, C) (or (B, C, H, W)), any H, W >= 1 -> same shape.
    """

    #: Parameters shared with OutlookAttention: VOLO(init_cfg=Pretrained) loads them from a
    #: VOLO checkpoint, so the model starts as the pretrained VOLO (offsets zero).
    OUTLOOK_PARAMETERS = ('v', 'attn', 'proj')

    def __init__(self, embed_dims: int, num_heads: int, kernel_size: int = 3,
                 padding: int | None = None, stride: int = 2,
                 offset_groups: int | None = None, offset_scale: float = 1.,
                 qkv_bias: bool = False, attn_drop_rate: float = 0.,
                 proj_drop_rate: float = 0., channels_last: bool = True,
                 impl: str | None = None, init_cfg: dict | list | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        name = type(self).__name__
        check_args(name, DEFORMABLE_OUTLOOK_RULES, dict(
            embed_dims=embed_dims, kernel_size=kernel_size, stride=stride,
            attn_drop_rate=attn_drop_rate, proj_drop_rate=proj_drop_rate,
            offset_scale=offset_scale))
        if padding is not None:
            check_arg('padding', padding, exactly(
                kernel_size // 2, f'must be kernel_size // 2 = {kernel_size // 2} (or None), '
                'so the window grid is the pooled ceil(H/S) grid'), name)
        divides = divisor_of(embed_dims, f'embed_dims={embed_dims}')
        num_heads = check_arg('num_heads', num_heads, divides, name)
        offset_groups = num_heads if offset_groups is None else offset_groups
        offset_groups = check_arg('offset_groups', offset_groups, divides, name)
        LOCAL_AGGREGATE_IMPLS.check_name(impl)
        self.embed_dims, self.num_heads, self.kernel_size = embed_dims, num_heads, kernel_size
        self.padding, self.stride = kernel_size // 2, stride
        self.offset_groups, self.offset_scale = offset_groups, float(offset_scale)
        self.channels_last, self.impl = channels_last, impl
        self.scale = (embed_dims // num_heads) ** -0.5
        taps = kernel_size * kernel_size
        self.v = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.attn = nn.Linear(embed_dims, taps * taps * num_heads)
        self.offset = ZeroLinear(embed_dims, offset_groups * taps * 2)
        self.attn_drop = nn.Dropout(attn_drop_rate)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, H, W, C) average-pooled to the window grid (B, ceil(H/S), ceil(W/S), C)."""
        if self.stride == 1:
            return x
        pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), self.stride, self.stride, ceil_mode=True)
        return pooled.permute(0, 2, 3, 1)

    def offsets(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, h, w, Go, K*K, 2) sampling offsets (dy, dx) in pixels."""
        taps = self.kernel_size * self.kernel_size
        out = self.offset(pooled) * self.offset_scale
        return out.unflatten(-1, (self.offset_groups, taps, 2))

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        taps = self.kernel_size * self.kernel_size
        pooled = self.pooled(x)
        logits = (self.attn(pooled) * self.scale).unflatten(-1, (self.num_heads, taps, taps))
        normalize = 'softmax'
        if self.training and self.attn_drop.p > 0:
            logits, normalize = self.attn_drop(logits.softmax(dim=-1)), None
        out = local_aggregate(self.v(x), logits, self.kernel_size, stride=self.stride,
                              padding=self.padding, groups=self.num_heads,
                              offset=self.offsets(pooled), normalize=normalize, fold=True,
                              impl=self.impl)
        return self.proj_drop(self.proj(out))


@MODELS.register_module()
class DCNv3Mixer(_TokenMixer):
    """DCNv3 (InternImage, Wang et al., CVPR 2023) as a token mixer.

    ``input_proj`` gives the values; a depthwise ``dw_kernel_size`` conv + LayerNorm + GELU
    on the input gives the features from which ``offset`` (G*K*K*2) and ``mask`` (G*K*K)
    are predicted per pixel; the mask is softmaxed over the K*K points of each group; the
    values are sampled bilinearly at the dilated window plus offsets and summed
    (:func:`mmvolo.ops.local_aggregate`), then ``output_proj``. Taps are row-major with
    (dy, dx) offsets (DCNv3's own layout is column-major (x, y); the predictors are learned,
    so only converted checkpoints would care: :mod:`mmvolo.ops.deform_aggregate` has the
    adapters).

    ``num_heads`` is not an argument (``groups`` is this mixer's knob, as Involution's).

    Args:
        embed_dims: channels C.
        kernel_size: sampling window K, odd. Default: 3.
        groups: G, channel groups with their own offsets and mask (C must divide by it).
            Default: None (C // 16, InternImage's 16 channels per group).
        dilation: window dilation D (padding D*(K//2)). Default: 1.
        dw_kernel_size: the depthwise conv of the offset/mask branch, odd. Default: 3.
        offset_scale: multiplies the predicted offsets (pixels). Default: 1.
        stride: must be 1. Default: 1.
        proj_drop_rate: dropout after ``output_proj``. Default: 0.
        channels_last: (B, H, W, C) in and out if True, else (B, C, H, W). Default: True.
        impl: ``local_aggregate`` impl, 'auto'/None (= 'fast'), 'fast' or 'reference'.
        init_cfg: mmengine init config. Default: None.

    Shapes:
        x: (B, H, W, C) (or (B, C, H, W)), any H, W >= 1 -> same shape.
    """

    def __init__(self, embed_dims: int, kernel_size: int = 3, groups: int | None = None,
                 dilation: int = 1, dw_kernel_size: int = 3, offset_scale: float = 1.,
                 stride: int = 1, proj_drop_rate: float = 0., channels_last: bool = True,
                 impl: str | None = None, init_cfg: dict | list | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        name = type(self).__name__
        check_args(name, DCNV3_RULES, dict(
            embed_dims=embed_dims, kernel_size=kernel_size, dw_kernel_size=dw_kernel_size,
            dilation=dilation, stride=stride, proj_drop_rate=proj_drop_rate,
            offset_scale=offset_scale))
        if groups is None:
            check_arg('embed_dims', embed_dims, divisor_of_default_groups, name)
            groups = embed_dims // GROUP_CHANNELS
        groups = check_arg('groups', groups, divisor_of(embed_dims, f'embed_dims={embed_dims}'),
                           name)
        LOCAL_AGGREGATE_IMPLS.check_name(impl)
        self.embed_dims, self.kernel_size, self.groups = embed_dims, kernel_size, groups
        self.dilation, self.stride, self.offset_scale = dilation, stride, float(offset_scale)
        self.channels_last, self.impl = channels_last, impl
        taps = kernel_size * kernel_size
        self.input_proj = nn.Linear(embed_dims, embed_dims)
        self.dw_conv = nn.Conv2d(embed_dims, embed_dims, dw_kernel_size,
                                 padding=dw_kernel_size // 2, groups=embed_dims)
        self.dw_norm = nn.LayerNorm(embed_dims)
        self.dw_act = nn.GELU()
        self.offset = ZeroLinear(embed_dims, groups * taps * 2)
        self.mask = ZeroLinear(embed_dims, groups * taps)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """GELU(LN(dwconv(x))): (B, H, W, C) -> (B, H, W, C), the offset/mask input."""
        f = self.dw_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.dw_act(self.dw_norm(f))

    def offsets_and_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Offsets (B, H, W, G, K*K, 2) (dy, dx) and mask logits (B, H, W, G, K*K)."""
        taps = self.kernel_size * self.kernel_size
        f = self.features(x)
        offset = (self.offset(f) * self.offset_scale).unflatten(-1, (self.groups, taps, 2))
        return offset, self.mask(f).unflatten(-1, (self.groups, taps))

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        offset, mask = self.offsets_and_mask(x)
        out = local_aggregate(self.input_proj(x), mask, self.kernel_size,
                              padding=self.dilation * (self.kernel_size // 2),
                              dilation=self.dilation, groups=self.groups, offset=offset,
                              normalize='softmax', impl=self.impl)
        return self.proj_drop(self.output_proj(out))


__all__ = ['DCNv3Mixer', 'DeformableOutlook', 'ZeroLinear']
