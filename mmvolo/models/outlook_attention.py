"""OutlookAttention: the module around :func:`mmvolo.ops.outlook_attention`."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from ..ops import OUTLOOK_IMPLS, outlook_attention
from ..registry import MODELS
from ..utils.validation import check_arg, check_args, divisor_of, int_at_least, rate

#: OutlookAttention's argument rules (:func:`mmvolo.utils.validation.check_args`).
OUTLOOK_RULES = {
    'embed_dims': int_at_least(1),
    'kernel_size': int_at_least(1),
    'padding': int_at_least(0),
    'stride': int_at_least(1),
    'proj_drop_rate': rate,
}


@MODELS.register_module()
class OutlookAttention(BaseModule):
    """Outlook attention (VOLO): attention weights over a KxK window predicted by a linear layer.

    For each position of a grid of stride ``stride``, a linear layer on the (average-pooled)
    token predicts ``num_heads`` KxK-by-KxK attention matrices; they mix the values of the
    KxK window and the results are folded back (summed where windows overlap). Parameter
    names (``v``, ``attn``, ``proj``) are those of the official release.

    Args:
        embed_dims: channels C.
        num_heads: heads; C must divide by it.
        kernel_size: window K. Default: 3.
        padding: window padding P. Default: 1.
        stride: stride S of the grid the weights are predicted on. Default: 1.
        qkv_bias: bias in the value projection. Default: False.
        proj_drop_rate: dropout after the output projection. Default: 0.
        channels_last: inputs/outputs are (B, H, W, C) if True, else (B, C, H, W).
            Default: True (as inside VOLO).
        impl: outlook-attention implementation, see :func:`mmvolo.ops.available_impls`;
            None follows $MMVOLO_OUTLOOK_IMPL, else 'auto'. Default: None.
        init_cfg: mmengine init config. Default: None.

    Shapes:
        x: (B, H, W, C) (or (B, C, H, W) with ``channels_last=False``), any H, W >= 1.
        returns: same shape as x.
    """

    def __init__(self, embed_dims: int, num_heads: int, kernel_size: int = 3, padding: int = 1,
                 stride: int = 1, qkv_bias: bool = False, proj_drop_rate: float = 0.,
                 channels_last: bool = True, impl: str | None = None,
                 init_cfg: dict | list | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        check_args('OutlookAttention', OUTLOOK_RULES, dict(
            embed_dims=embed_dims, kernel_size=kernel_size, padding=padding, stride=stride,
            proj_drop_rate=proj_drop_rate))
        check_arg('num_heads', num_heads, divisor_of(embed_dims, f'embed_dims={embed_dims}'),
                  'OutlookAttention')
        OUTLOOK_IMPLS.check_name(impl)
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        self.padding = padding
        self.stride = stride
        self.channels_last = channels_last
        self.impl = impl
        self.scale = (embed_dims // num_heads) ** -0.5
        self.v = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.attn = nn.Linear(embed_dims, kernel_size ** 4 * num_heads)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def attention_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled logits (B, ceil(H/S), ceil(W/S), heads*K^4) from tokens x (B, H, W, C)."""
        if self.stride > 1:
            pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), self.stride, self.stride,
                                  ceil_mode=True)
            x = pooled.permute(0, 2, 3, 1)
        return self.attn(x) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            x = x.permute(0, 2, 3, 1)
        out = outlook_attention(self.v(x), self.attention_logits(x), self.num_heads,
                                self.kernel_size, self.padding, self.stride, impl=self.impl)
        out = self.proj_drop(self.proj(out))
        return out if self.channels_last else out.permute(0, 3, 1, 2)
