"""VOLO's token embedding: the convolutional stem, the stage downsample, pos_embed resizing."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Input pixels per token after the downsample: pos_embed has (H/16, W/16) entries, and the
#: backbone pads inputs to a multiple of it.
POS_EMBED_STRIDE = 16


class PatchEmbed(nn.Module):
    """Images (B, 3, H, W) -> tokens (B, C, H/8, W/8) (H, W multiples of 8).

    Official layout (``conv.0`` ... ``conv.8``, ``proj``): three conv-BN-ReLU layers (7x7
    stride 2, 3x3, 3x3; ``hidden_dims`` channels) then a 4x4 stride-4 projection.
    """

    def __init__(self, in_channels: int = 3, hidden_dims: int = 64, embed_dims: int = 384,
                 patch_size: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index, (kernel, stride) in enumerate([(7, 2), (3, 1), (3, 1)]):
            layers += [
                nn.Conv2d(in_channels if index == 0 else hidden_dims, hidden_dims, kernel,
                          stride, padding=kernel // 2, bias=False),
                nn.BatchNorm2d(hidden_dims),
                nn.ReLU(inplace=True),
            ]
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Conv2d(hidden_dims, embed_dims, patch_size // 2, patch_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.conv(x))


class Downsample(nn.Module):
    """2x2 stride-2 conv between the outlooker and transformer stages: (B, H, W, C) ->
    (B, H/2, W/2, C') (floors odd sizes; the backbone pads so that never happens)."""

    def __init__(self, in_dims: int, out_dims: int, patch_size: int = 2) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dims, out_dims, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def resize_pos_embed(pos_embed: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a channels-last position embedding.

    Args:
        pos_embed: (1, h, w, C).
        size: target (H, W).

    Returns:
        (1, H, W, C); the input itself when the size already matches.
    """
    if tuple(pos_embed.shape[1:3]) == tuple(size):
        return pos_embed
    resized = F.interpolate(pos_embed.permute(0, 3, 1, 2).float(), size=size, mode='bicubic',
                            align_corners=False)
    return resized.to(pos_embed.dtype).permute(0, 2, 3, 1)
