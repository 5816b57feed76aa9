"""The mmcv ops RetinaNet, Faster R-CNN and Mask R-CNN need, backed by torchvision.

mmcv-lite has no compiled ops; :func:`~mmvolo.runtime.mmcv_ext.install_mmcv_ext_standin`
installs a stand-in ``mmcv._ext`` whose ops raise "needs full mmcv" when called. mmcv's Python
wrappers (``mmcv.ops.nms``, ``batched_nms``, ``RoIAlign``, ``sigmoid_focal_loss``) call
``ext_module.<op>(...)`` by attribute at call time, so setting these functions on the stand-in
module makes the wrappers work unchanged. Only the stand-in is filled: real compiled ops are
never shadowed, and every other op keeps failing with one line naming it and the fix.

Provided ``mmcv._ext`` functions (mmcv 2.1 signatures):

- ``nms(boxes, scores, iou_threshold, offset)``: ``torchvision.ops.nms`` (offset 0 only).
- ``roi_align_forward`` / ``roi_align_backward``: ``torchvision.ops.roi_align``
  (``pool_mode`` 'avg' only; aligned or not; any ``sampling_ratio``).
- ``sigmoid_focal_loss_forward`` / ``_backward``: torch (mmdet uses them on CUDA only;
  no per-class ``weight``).
"""
from __future__ import annotations

import sys
import types
from typing import Callable

import torch
import torch.nn.functional as F

from .mmcv_ext import _MissingOp

#: mmcv's ``pool_mode`` codes (``RoIAlignFunction``): 0 max, 1 avg.
_POOL_AVG = 1


def _unsupported(op: str, what: str) -> RuntimeError:
    return RuntimeError(
        f"mmcv op '{op}' with {what} is beyond mmvolo's torchvision-backed stand-in (it has "
        "the arguments mmdet's RetinaNet/Faster/Mask R-CNN use); install full mmcv 2.1 with "
        "its compiled ops to use it")


# ----------------------------------------------------------------------------------- nms
def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
        offset: int = 0) -> torch.Tensor:
    """Boxes (N, 4) xyxy, scores (N,) -> kept indices (K,) int64, by decreasing score."""
    if int(offset) != 0:
        raise _unsupported('nms', f'offset={offset} (only 0)')
    from torchvision.ops import nms as tv_nms
    return tv_nms(boxes, scores.to(boxes.dtype), float(iou_threshold))


# ----------------------------------------------------------------------------- roi_align
def _check_roi_align(op: str, pool_mode: int) -> None:
    if int(pool_mode) != _POOL_AVG:
        mode = 'max' if int(pool_mode) == 0 else pool_mode
        raise _unsupported(op, f"pool_mode={mode!r} (only 'avg')")


def _tv_roi_align(input: torch.Tensor, rois: torch.Tensor, aligned_height: int,
                  aligned_width: int, spatial_scale: float, sampling_ratio: int,
                  aligned: bool) -> torch.Tensor:
    """Input (N, C, H, W), rois (K, 5) [batch, x1, y1, x2, y2] -> (K, C, h, w)."""
    from torchvision.ops import roi_align as tv_roi_align
    return tv_roi_align(input, rois.to(input.dtype), (int(aligned_height), int(aligned_width)),
                        float(spatial_scale), int(sampling_ratio), bool(aligned))


def roi_align_forward(input: torch.Tensor, rois: torch.Tensor, output: torch.Tensor,
                      argmax_y: torch.Tensor, argmax_x: torch.Tensor, aligned_height: int,
                      aligned_width: int, spatial_scale: float, sampling_ratio: int,
                      pool_mode: int, aligned: bool) -> None:
    """Fill ``output`` (K, C, h, w) with RoIAlign of input (N, C, H, W) at rois (K, 5)."""
    _check_roi_align('roi_align_forward', pool_mode)
    with torch.no_grad():
        output.copy_(_tv_roi_align(input, rois, aligned_height, aligned_width, spatial_scale,
                                   sampling_ratio, aligned))


def roi_align_backward(grad_output: torch.Tensor, rois: torch.Tensor, argmax_y: torch.Tensor,
                       argmax_x: torch.Tensor, grad_input: torch.Tensor, aligned_height: int,
                       aligned_width: int, spatial_scale: float, sampling_ratio: int,
                       pool_mode: int, aligned: bool) -> None:
    """Add to ``grad_input`` (N, C, H, W) the RoIAlign gradient of grad_output (K, C, h, w).

    RoIAlign is linear in its input, so the gradient is torchvision's backward evaluated at
    any input (zeros here).
    """
    _check_roi_align('roi_align_backward', pool_mode)
    with torch.enable_grad():
        probe = grad_input.new_zeros(grad_input.shape).requires_grad_()
        pooled = _tv_roi_align(probe, rois, aligned_height, aligned_width, spatial_scale,
                               sampling_ratio, aligned)
        (grad,) = torch.autograd.grad(pooled, probe, grad_output.to(pooled.dtype))
    grad_input.add_(grad)


# -------------------------------------------------------------------- sigmoid focal loss
def _focal_loss(input: torch.Tensor, target: torch.Tensor, gamma: float,
                alpha: float) -> torch.Tensor:
    """Logits (N, C), labels (N,) in [0, C] (C: background) -> elementwise loss (N, C)."""
    classes = torch.arange(input.size(1), device=input.device)
    positive = target[:, None] == classes[None, :]
    prob = input.sigmoid()
    loss_pos = -alpha * (1 - prob).pow(gamma) * F.logsigmoid(input)
    loss_neg = -(1 - alpha) * prob.pow(gamma) * F.logsigmoid(-input)
    return torch.where(positive, loss_pos, loss_neg)


def _check_focal(op: str, weight: torch.Tensor) -> None:
    if weight.numel() != 0:
        raise _unsupported(op, 'per-class weight')


def sigmoid_focal_loss_forward(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                               output: torch.Tensor, gamma: float, alpha: float) -> None:
    """Fill ``output`` (N, C) with the sigmoid focal loss of logits (N, C), labels (N,)."""
    _check_focal('sigmoid_focal_loss_forward', weight)
    with torch.no_grad():
        output.copy_(_focal_loss(input, target, float(gamma), float(alpha)))


def sigmoid_focal_loss_backward(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                                grad_input: torch.Tensor, gamma: float, alpha: float) -> None:
    """Fill ``grad_input`` (N, C) with d(loss)/d(logits) of the elementwise focal loss."""
    _check_focal('sigmoid_focal_loss_backward', weight)
    with torch.enable_grad():
        logits = input.detach().requires_grad_()
        loss = _focal_loss(logits, target, float(gamma), float(alpha))
        (grad,) = torch.autograd.grad(loss.sum(), logits)
    grad_input.copy_(grad)


#: ``mmcv._ext`` functions provided here, by name.
TORCHVISION_OPS: dict[str, Callable[..., object]] = {
    'nms': nms,
    'roi_align_forward': roi_align_forward,
    'roi_align_backward': roi_align_backward,
    'sigmoid_focal_loss_forward': sigmoid_focal_loss_forward,
    'sigmoid_focal_loss_backward': sigmoid_focal_loss_backward,
}


def is_mmcv_ext_standin(module: types.ModuleType | None) -> bool:
    """Whether ``module`` is mmvolo's stand-in ``mmcv._ext`` (any unknown op is a
    ``_MissingOp``), not real compiled ops (unknown names raise AttributeError)."""
    return isinstance(getattr(module, '_mmvolo_standin_probe', None), _MissingOp)


def install_torchvision_ops() -> list[str]:
    """Fill the stand-in ``mmcv._ext`` with :data:`TORCHVISION_OPS`.

    Does nothing when ``mmcv._ext`` is absent or is real compiled mmcv; in the stand-in only
    ops still missing are set, so nothing real is ever shadowed.

    Returns:
        Names of the ops installed (empty if none).
    """
    module = sys.modules.get('mmcv._ext')
    if not is_mmcv_ext_standin(module):
        return []
    installed = []
    for name, function in TORCHVISION_OPS.items():
        if isinstance(getattr(module, name), _MissingOp):
            setattr(module, name, function)
            installed.append(name)
    return installed
