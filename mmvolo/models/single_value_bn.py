"""BatchNorm that trains with one value per channel (batch 1 through a 1x1-pooled branch).

With one image per process, UPerHead's pyramid-pooling branch ``AdaptiveAvgPool2d(1)`` ->
ConvModule(BN) hands its BN a ``(1, C, 1, 1)`` tensor: one value per channel, no batch
statistics to normalise with, and PyTorch raises "Expected more than 1 value per channel when
training". (With 8 GPUs x 1 image, SyncBN pools the 8 values; a single process reverts SyncBN
to BN.) :func:`guard_single_value_batchnorm` makes such a call normalise with the layer's
running statistics instead, as in evaluation, and leave them unchanged: the layer is then an
affine map of its input, the same in training and in testing, and its weights still learn.
Calls with two or more values per channel are untouched: batch >= 2 trains exactly as before.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

_GUARDED = '_mmvolo_single_value_guard'
_SWITCHED = '_mmvolo_single_value_eval'


def guard_single_value_batchnorm(model: nn.Module) -> int:
    """Guard every BatchNorm layer of ``model`` that would raise on one value per channel
    (all but SyncBN across more than one process); returns how many were guarded."""
    count = 0
    for module in model.modules():
        if not isinstance(module, _BatchNorm) or getattr(module, _GUARDED, False):
            continue
        if isinstance(module, nn.SyncBatchNorm) and _world_size() > 1:
            continue  # SyncBN pools the values of all processes
        module.register_forward_pre_hook(_normalise_single_values_as_in_eval)
        module.register_forward_hook(_restore_training, always_call=True)
        setattr(module, _GUARDED, True)
        count += 1
    return count


def _normalise_single_values_as_in_eval(module: nn.Module, args: tuple) -> None:
    inputs = args[0] if args else None
    if (module.training and isinstance(inputs, torch.Tensor) and inputs.dim() >= 2
            and inputs.numel() == inputs.shape[1] and module.track_running_stats):
        module.training = False
        setattr(module, _SWITCHED, True)


def _restore_training(module: nn.Module, args: tuple, output: object) -> None:
    if module.__dict__.pop(_SWITCHED, False):
        module.training = True


def _world_size() -> int:
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_world_size()
    return 1
