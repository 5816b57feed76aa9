"""VOLO's class-attention post layers: only the class token attends to all tokens.

Parameter names follow the official release (``norm1``, ``attn.kv``, ``attn.q``, ``attn.proj``,
``norm2``, ``mlp.fc1``, ``mlp.fc2``), so ``post_network.{i}.*`` weights load as they are.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule

from ..models.blocks import DEFAULT_ACT_CFG, DEFAULT_NORM_CFG, Mlp, _drop_path


class ClassAttention(nn.Module):
    """Multi-head attention of the class token (first token) over all tokens.

    Shapes:
        x: (B, 1 + N, C) -> updated class token (B, 1, C).
    """

    def __init__(self, embed_dims: int, num_heads: int, qkv_bias: bool = False,
                 attn_drop_rate: float = 0., proj_drop_rate: float = 0.) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f'ClassAttention: embed_dims {embed_dims} must divide by '
                             f'num_heads {num_heads}')
        self.num_heads = num_heads
        self.attn_drop_rate = attn_drop_rate
        self.kv = nn.Linear(embed_dims, embed_dims * 2, bias=qkv_bias)
        self.q = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, num_tokens, channels = x.shape
        kv = self.kv(x).reshape(batch, num_tokens, 2, self.num_heads, -1)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, 1 + N, d)
        q = self.q(x[:, :1]).reshape(batch, 1, self.num_heads, -1).transpose(1, 2)
        drop = self.attn_drop_rate if self.training else 0.
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, heads, 1, d)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, 1, channels)))


class ClassBlock(BaseModule):
    """Class-attention block: cls + CA(LN(x)), then cls + Mlp(LN(cls)); patch tokens pass.

    Args:
        embed_dims: channels C.
        num_heads: attention heads.
        mlp_ratio: MLP hidden size / C. Default: 3.
        qkv_bias: biases in the q / kv projections. Default: False.
        drop_rate: dropout after the attention projection and in the MLP. Default: 0.
        attn_drop_rate: attention dropout. Default: 0.
        drop_path_rate: stochastic depth. Default: 0 (as the official post layers).
        norm_cfg, act_cfg: mmcv norm / activation configs. Default: LN eps 1e-5, GELU.
        init_cfg: mmengine init config. Default: None.

    Shapes:
        x: (B, 1 + N, C), class token first -> (B, 1 + N, C).
    """

    def __init__(self, embed_dims: int, num_heads: int, mlp_ratio: float = 3.,
                 qkv_bias: bool = False, drop_rate: float = 0., attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0., norm_cfg: dict = DEFAULT_NORM_CFG,
                 act_cfg: dict = DEFAULT_ACT_CFG, init_cfg: dict | list | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = ClassAttention(embed_dims, num_heads, qkv_bias, attn_drop_rate, drop_rate)
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.mlp = Mlp(embed_dims, int(embed_dims * mlp_ratio), act_cfg, drop_rate)
        self.drop_path = _drop_path(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls_token = x[:, :1] + self.drop_path(self.attn(self.norm1(x)))
        cls_token = cls_token + self.drop_path(self.mlp(self.norm2(cls_token)))
        return torch.cat([cls_token, x[:, 1:]], dim=1)
