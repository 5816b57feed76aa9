"""VOLO's blocks: the MLP, the Outlooker block and the self-attention (Transformer) block.

All work on channels-last tokens (B, H, W, C) and keep the official parameter names
(``norm1``, ``attn``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) so released weights load as they are.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmcv.cnn.bricks.drop import DropPath
from mmengine.model import BaseModule

from ..registry import MODELS
from .mixer_builder import DEFAULT_TOKEN_MIXER, build_token_mixer, mixer_type

#: VOLO's LayerNorm (official eps).
DEFAULT_NORM_CFG = dict(type='LN', eps=1e-5)
DEFAULT_ACT_CFG = dict(type='GELU')


def _drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0 else nn.Identity()


class Mlp(nn.Module):
    """fc1 -> act -> drop -> fc2 -> drop on the last dim: (..., C) -> (..., C)."""

    def __init__(self, in_dims: int, hidden_dims: int, act_cfg: dict = DEFAULT_ACT_CFG,
                 drop_rate: float = 0.) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dims, hidden_dims)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = nn.Linear(hidden_dims, in_dims)
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class PreNormResidualBlock(BaseModule):
    """x + DropPath(mixer(LN(x))), then x + DropPath(Mlp(LN(x))): the shape of both VOLO
    blocks. Subclasses build the token mixer (``self.attn``, the official name).

    Shapes:
        x: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, embed_dims: int, mixer: nn.Module, mlp_ratio: float,
                 drop_path_rate: float, norm_cfg: dict, act_cfg: dict,
                 init_cfg: dict | list | None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = mixer
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.mlp = Mlp(embed_dims, int(embed_dims * mlp_ratio), act_cfg)
        self.drop_path = _drop_path(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@MODELS.register_module()
class Outlooker(PreNormResidualBlock):
    """Outlooker block: x + OutlookAttention(LN(x)), then x + Mlp(LN(x)).

    ``token_mixer`` swaps OutlookAttention for another registered mixer (Involution,
    LocalSelfAttention, DWConvMixer, ...) in the same block; it is built with this block's
    ``embed_dims`` and, where its constructor takes them and the config does not set them,
    ``num_heads`` and ``qkv_bias``. The outlook window arguments (``kernel_size``,
    ``padding``, ``stride``, ``impl``) apply to OutlookAttention only.

    Args:
        embed_dims: channels C.
        num_heads: outlook-attention heads.
        kernel_size, padding, stride: outlook window K, padding P, grid stride S.
            Default: 3, 1, 1 (VOLO uses stride 2).
        mlp_ratio: MLP hidden size / C. Default: 3.
        qkv_bias: bias in the value projection. Default: False.
        drop_path_rate: stochastic depth. Default: 0 (the official models use none here).
        norm_cfg, act_cfg: mmcv norm / activation configs. Default: LN eps 1e-5, GELU.
        impl: outlook-attention implementation (see :mod:`mmvolo.ops`). Default: None (auto).
        token_mixer: config of the mixer, e.g. ``dict(type='Involution', groups=12)``.
            Default: None (OutlookAttention).
        init_cfg: mmengine init config. Default: None.

    Shapes:
        x: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, embed_dims: int, num_heads: int, kernel_size: int = 3, padding: int = 1,
                 stride: int = 1, mlp_ratio: float = 3., qkv_bias: bool = False,
                 drop_path_rate: float = 0., norm_cfg: dict = DEFAULT_NORM_CFG,
                 act_cfg: dict = DEFAULT_ACT_CFG, impl: str | None = None,
                 token_mixer: dict | None = None,
                 init_cfg: dict | list | None = None) -> None:
        defaults: dict = dict(num_heads=num_heads, qkv_bias=qkv_bias)
        if mixer_type(token_mixer) == DEFAULT_TOKEN_MIXER:
            defaults.update(kernel_size=kernel_size, padding=padding, stride=stride, impl=impl)
        mixer = build_token_mixer(token_mixer, embed_dims, **defaults)
        super().__init__(embed_dims, mixer, mlp_ratio, drop_path_rate, norm_cfg, act_cfg,
                         init_cfg)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens: (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, embed_dims: int, num_heads: int, qkv_bias: bool = False,
                 attn_drop_rate: float = 0.) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f'SelfAttention: embed_dims {embed_dims} must divide by '
                             f'num_heads {num_heads}')
        self.num_heads = num_heads
        self.attn_drop_rate = attn_drop_rate
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, d)
        drop = self.attn_drop_rate if self.training else 0.
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.proj(out.transpose(1, 2).reshape(batch, height, width, channels))


@MODELS.register_module()
class VOLOTransformerBlock(PreNormResidualBlock):
    """VOLO's second-stage block: x + MHSA(LN(x)), then x + Mlp(LN(x)).

    Args:
        embed_dims: channels C.
        num_heads: attention heads.
        mlp_ratio: MLP hidden size / C. Default: 3.
        qkv_bias: bias in the qkv projection. Default: False.
        attn_drop_rate: attention dropout. Default: 0.
        drop_path_rate: stochastic depth. Default: 0.
        norm_cfg, act_cfg: mmcv norm / activation configs. Default: LN eps 1e-5, GELU.
        init_cfg: mmengine init config. Default: None.

    Shapes:
        x: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, embed_dims: int, num_heads: int, mlp_ratio: float = 3.,
                 qkv_bias: bool = False, attn_drop_rate: float = 0., drop_path_rate: float = 0.,
                 norm_cfg: dict = DEFAULT_NORM_CFG, act_cfg: dict = DEFAULT_ACT_CFG,
                 init_cfg: dict | list | None = None) -> None:
        mixer = SelfAttention(embed_dims, num_heads, qkv_bias, attn_drop_rate)
        super().__init__(embed_dims, mixer, mlp_ratio, drop_path_rate, norm_cfg, act_cfg,
                         init_cfg)
