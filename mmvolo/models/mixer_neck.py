"""MixerNeck: Outlooker (or any token-mixer) blocks on a backbone's pyramid, before the head."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from ..registry import MODELS
from ..utils.validation import check_arg, int_at_least, is_int
from .blocks import DEFAULT_ACT_CFG, DEFAULT_NORM_CFG, PreNormResidualBlock
from .mixer_builder import build_token_mixer

#: The neck's default mixer: outlook attention at stride 1 (every position predicts its own
#: window weights; the maps a neck sees are already downsampled by the backbone).
DEFAULT_NECK_MIXER = dict(type='OutlookAttention', kernel_size=3, padding=1, stride=1)


@MODELS.register_module()
class MixerNeck(BaseModule):
    """``num_blocks`` pre-norm residual token-mixer blocks (x + mixer(LN(x)), then
    x + Mlp(LN(x)), as VOLO's Outlooker) on chosen pyramid levels of any backbone (VOLO, Swin,
    ResNet, ...); the other levels pass through unchanged.

    Args:
        in_channels: channels of each input level, e.g. ``[96, 192, 384, 768]`` (Swin-T).
        levels: the levels that get blocks. Default: None (all).
        num_blocks: blocks per selected level. Default: 1.
        token_mixer: mixer config (see :mod:`mmvolo.models.mixer_builder`); ``embed_dims`` is
            each level's channels. Default: OutlookAttention, K=3, stride 1.
        head_dims: channels per head, for mixers that take ``num_heads`` and whose config
            does not set it: ``num_heads = C // head_dims``. Default: 32.
        mlp_ratio: MLP hidden size / C. Default: 3.
        drop_path_rate: stochastic depth of every block. Default: 0.
        norm_cfg, act_cfg: mmcv norm / activation configs. Default: LN eps 1e-5, GELU.
        init_cfg: Default: truncated normal (std .02) for the linears, as VOLO.

    Shapes:
        inputs: tuple of (B, C_i, H_i, W_i), one per level -> a tuple of the same shapes
        (NCHW-contiguous).
    """

    def __init__(self, in_channels: Sequence[int], levels: Sequence[int] | None = None,
                 num_blocks: int = 1, token_mixer: dict | None = None, head_dims: int = 32,
                 mlp_ratio: float = 3., drop_path_rate: float = 0.,
                 norm_cfg: dict = DEFAULT_NORM_CFG, act_cfg: dict = DEFAULT_ACT_CFG,
                 init_cfg: dict | list | None = None) -> None:
        if init_cfg is None:
            init_cfg = dict(type='TruncNormal', layer='Linear', std=.02, bias=0.)
        super().__init__(init_cfg=init_cfg)
        self.in_channels = check_arg('in_channels', in_channels, channel_list, 'MixerNeck')
        self.levels = (list(range(len(self.in_channels))) if levels is None else
                       check_arg('levels', levels, level_list(len(self.in_channels)),
                                 'MixerNeck'))
        check_arg('num_blocks', num_blocks, int_at_least(1), 'MixerNeck')
        mixer_cfg = DEFAULT_NECK_MIXER if token_mixer is None else token_mixer
        self.stages = nn.ModuleDict({
            str(level): nn.Sequential(*[
                PreNormResidualBlock(
                    self.in_channels[level],
                    _build_mixer(mixer_cfg, self.in_channels[level], head_dims, level),
                    mlp_ratio, drop_path_rate, norm_cfg, act_cfg, init_cfg=None)
                for _ in range(num_blocks)])
            for level in self.levels})

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f'MixerNeck expects {len(self.in_channels)} levels (in_channels '
                             f'{self.in_channels}), got {len(inputs)}; set in_channels to the '
                             "backbone's out_channels")
        outputs = []
        for level, feature in enumerate(inputs):
            if str(level) in self.stages:
                tokens = self.stages[str(level)](feature.permute(0, 2, 3, 1))
                feature = tokens.permute(0, 3, 1, 2).contiguous()
            outputs.append(feature)
        return tuple(outputs)


def _build_mixer(cfg: dict, channels: int, head_dims: int, level: int) -> nn.Module:
    if 'num_heads' in cfg:
        return build_token_mixer(cfg, channels)
    if not (is_int(head_dims) and head_dims >= 1) or channels % head_dims:
        raise ValueError(f'MixerNeck level {level} has {channels} channels, not a multiple of '
                         f'head_dims={head_dims!r}; set head_dims or token_mixer.num_heads')
    return build_token_mixer(cfg, channels, num_heads=channels // head_dims)


def channel_list(in_channels: Any) -> list[int]:
    """Rule: a non-empty list of ints >= 1 (the backbone's out_channels)."""
    if (isinstance(in_channels, (str, bytes)) or not isinstance(in_channels, Sequence)
            or not in_channels or not all(is_int(c) and c >= 1 for c in in_channels)):
        raise ValueError("must be a non-empty list of ints >= 1, the backbone's out_channels")
    return [int(c) for c in in_channels]


def level_list(num_levels: int) -> Callable[[Any], list[int]]:
    """Rule: a non-empty list of level indices in 0..num_levels-1 (sorted, deduplicated)."""

    def rule(levels: Any) -> list[int]:
        if (isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or not levels
                or not all(is_int(i) and 0 <= i < num_levels for i in levels)):
            raise ValueError(f'must be a non-empty list of level indices in '
                             f'0..{num_levels - 1}')
        return sorted({int(i) for i in levels})

    return rule
