"""Adaptive average pooling whose bins follow the runtime size, for ONNX export.

PyTorch's ``F.adaptive_avg_pool2d(x, (oh, ow))`` on (B, C, H, W) averages, for output row
``i``, input rows ``floor(i * H / oh) <= r < ceil((i + 1) * H / oh)`` (columns likewise). The
exporter decomposes it with the bins of the traced size as constants, so a graph with dynamic
H, W is wrong at every other size. Here the bins are computed from the tensor's own size
(``Shape`` -> ``Range`` -> integer arithmetic in ONNX) as two pooling matrices::

    P_h[i, r] = [start_i <= r < end_i] / (end_i - start_i)        (oh, H); P_w likewise
    out = P_h @ x @ P_w^T                                           (B, C, oh, ow)

:func:`export_safe_pooling` swaps every ``nn.AdaptiveAvgPool2d`` of a model for
:class:`SizeFollowingAvgPool2d` for the duration of a block (the export) and puts the
originals back after it, whatever happens.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def pooling_matrix(size: int | torch.SymInt, bins: int, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """(bins, size): row ``i`` is ``1 / (end_i - start_i)`` over ``start_i <= r < end_i``,
    ``start_i = floor(i * size / bins)``, ``end_i = ceil((i + 1) * size / bins)``."""
    index = torch.arange(bins, device=device)
    positions = torch.arange(size, device=device)
    start = torch.div(index * size, bins, rounding_mode='floor')
    end = torch.div((index + 1) * size + bins - 1, bins, rounding_mode='floor')
    inside = (positions[None, :] >= start[:, None]) & (positions[None, :] < end[:, None])
    return inside.to(dtype) / (end - start).to(dtype)[:, None]


def adaptive_avg_pool2d(x: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, oh, ow), PyTorch's adaptive average pooling as two matmuls with
    :func:`pooling_matrix` (bins from ``x``'s own H and W, also under ``torch.export``)."""
    bins_h, bins_w = output_size
    rows = pooling_matrix(x.shape[2], bins_h, x.dtype, x.device)
    cols = pooling_matrix(x.shape[3], bins_w, x.dtype, x.device)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


class SizeFollowingAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(output_size)`` computed by :func:`adaptive_avg_pool2d`."""

    def __init__(self, output_size: int | tuple[int | None, int | None]) -> None:
        super().__init__()
        pair = (output_size, output_size) if isinstance(output_size, int) else output_size
        if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
            raise ValueError(f'SizeFollowingAvgPool2d output_size={output_size!r}: must be a '
                             'positive int or a pair of them (None, "keep the input size", is '
                             'not supported)')
        self.output_size = (int(pair[0]), int(pair[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f'output_size={self.output_size}'


@contextlib.contextmanager
def export_safe_pooling(model: nn.Module) -> Iterator[int]:
    """Within the block, every ``nn.AdaptiveAvgPool2d`` of ``model`` is a
    :class:`SizeFollowingAvgPool2d` of the same output size; yields how many were swapped.
    The original modules are put back when the block ends (also on an exception)."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.AdaptiveAvgPool2d):
                    setattr(parent, name, SizeFollowingAvgPool2d(child.output_size))
                    swapped.append((parent, name, child))
        yield len(swapped)
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)
