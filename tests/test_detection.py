"""Detection with mmdet on mmcv-lite: torchvision-backed mmcv ops, the volo_det configs, and
one training step and one inference of RetinaNet and Mask R-CNN with a VOLO backbone (CPU)."""
from __future__ import annotations

import collections
import importlib
import math
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest
import torch

pytest.importorskip('mmdet')

# mmvolo.runtime before mmcv.ops: it installs the stand-in mmcv._ext and fills its ops
importlib.import_module('mmvolo.runtime')

import mmcv.ops  # noqa: E402
import torchvision.ops as tv_ops  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

import mmvolo  # noqa: E402,F401
from mmvolo.models.arch_zoo import ARCH_ZOO  # noqa: E402
from mmvolo.models.volo import VOLO  # noqa: E402
from mmvolo.runtime import mmcv_ops  # noqa: E402
from mmvolo.runtime.mmcv_ext import _make_mmcv_ext_standin  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / 'configs' / 'volo_det'
D1_CONFIGS = ('retinanet_volo-d1_fpn_1x_coco.py', 'mask-rcnn_volo-d1_fpn_1x_coco.py')
IMG = 128
STANDIN = mmcv_ops.is_mmcv_ext_standin(sys.modules.get('mmcv._ext'))
needs_standin = pytest.mark.skipif(not STANDIN, reason='real compiled mmcv ops are installed')


def _one_line_error(excinfo: pytest.ExceptionInfo, *words: str) -> None:
    message = str(excinfo.value)
    assert '\n' not in message and all(word in message for word in words), message


# --------------------------------------------------------------------------------- nms
def _reference_nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Greedy NMS, one box at a time: boxes (N, 4), scores (N,) -> kept indices."""
    order, keep = scores.argsort(descending=True).tolist(), []
    while order:
        best, order = order[0], order[1:]
        keep.append(best)
        ious = tv_ops.box_iou(boxes[best:best + 1], boxes[order])[0] if order else []
        order = [index for index, value in zip(order, ious) if value <= iou]
    return torch.tensor(keep, dtype=torch.long)


def _random_boxes(count: int, size: float = 64.) -> torch.Tensor:
    xy = torch.rand(count, 2) * size
    return torch.cat([xy, xy + 4 + torch.rand(count, 2) * size / 2], dim=1)


@needs_standin
def test_nms_equals_torchvision_and_reference() -> None:
    boxes, scores = _random_boxes(200), torch.rand(200)
    for iou in (0.3, 0.5, 0.7):
        _, kept = mmcv.ops.nms(boxes, scores, iou)
        assert torch.equal(kept, tv_ops.nms(boxes, scores, iou))
        assert torch.equal(kept, _reference_nms(boxes, scores, iou))
    _, kept = mmcv.ops.nms(boxes[:0], scores[:0], 0.5)
    assert kept.numel() == 0


@needs_standin
def test_batched_nms_is_per_class() -> None:
    boxes, scores, labels = _random_boxes(300), torch.rand(300), torch.randint(0, 3, (300,))
    dets, kept = mmcv.ops.batched_nms(boxes, scores, labels, dict(type='nms', iou_threshold=.5))
    assert torch.equal(kept, tv_ops.batched_nms(boxes, scores, labels, 0.5))
    assert torch.equal(dets[:, 4], scores[kept])
    # over split_thr boxes mmcv loops over classes: same answer
    _, split = mmcv.ops.batched_nms(boxes, scores, labels,
                                    dict(type='nms', iou_threshold=.5, split_thr=10))
    assert torch.equal(split, kept)


def test_nms_rejects_offset_in_one_line() -> None:
    with pytest.raises(RuntimeError) as excinfo:
        mmcv_ops.nms(_random_boxes(4), torch.rand(4), 0.5, offset=1)
    _one_line_error(excinfo, "'nms'", 'offset=1', 'install')


# --------------------------------------------------------------------------- roi_align
def _bilinear(feature: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """mmcv's bilinear sample of feature (C, H, W) at (y, x) -> (C,)."""
    height, width = feature.shape[1:]
    if y < -1 or y > height or x < -1 or x > width:
        return feature.new_zeros(feature.shape[0])
    y, x = max(y, 0.), max(x, 0.)
    y0, x0 = min(int(y), height - 1), min(int(x), width - 1)
    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
    y, x = min(y, float(y0)) if y0 == height - 1 else y, min(x, float(x0)) if x0 == width - 1 else x
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * feature[:, y0, x0] + (1 - ly) * lx * feature[:, y0, x1]
            + ly * (1 - lx) * feature[:, y1, x0] + ly * lx * feature[:, y1, x1])


def _reference_roi_align(input: torch.Tensor, rois: torch.Tensor, size: tuple[int, int],
                         scale: float, sampling: int, aligned: bool) -> torch.Tensor:
    """Loop RoIAlign (mmcv's definition, 'avg'): (N, C, H, W), (K, 5) -> (K, C, h, w)."""
    out = input.new_zeros(rois.shape[0], input.shape[1], *size)
    shift = 0.5 if aligned else 0.
    for k, (batch, *box) in enumerate(rois.tolist()):
        x1, y1, x2, y2 = (value * scale - shift for value in box)
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.), max(roi_h, 1.)
        bin_h, bin_w = roi_h / size[0], roi_w / size[1]
        grid_h = sampling or math.ceil(roi_h / size[0])
        grid_w = sampling or math.ceil(roi_w / size[1])
        for i in range(size[0]):
            for j in range(size[1]):
                samples = [_bilinear(input[int(batch)], y1 + i * bin_h + (a + .5) * bin_h / grid_h,
                                     x1 + j * bin_w + (b + .5) * bin_w / grid_w)
                           for a in range(grid_h) for b in range(grid_w)]
                out[k, :, i, j] = torch.stack(samples).sum(0) / max(grid_h * grid_w, 1)
    return out


def _rois(count: int, batch: int, size: float) -> torch.Tensor:
    index = torch.randint(0, batch, (count, 1)).float()
    return torch.cat([index, _random_boxes(count, size)], dim=1)


ROI_CASES = [(aligned, sampling, scale) for aligned in (True, False) for sampling in (0, 2)
             for scale in (1., 0.25)]


@needs_standin
@pytest.mark.parametrize('aligned,sampling,scale', ROI_CASES)
def test_roi_align_equals_torchvision(aligned: bool, sampling: int, scale: float) -> None:
    """Values and input gradients of mmcv.ops.RoIAlign equal torchvision's roi_align."""
    feature = torch.randn(2, 5, 24, 20, dtype=torch.float64)
    rois = _rois(12, 2, 24 / scale).double()
    ours_in, theirs_in = feature.clone().requires_grad_(), feature.clone().requires_grad_()
    ours = mmcv.ops.RoIAlign((7, 6), scale, sampling, 'avg', aligned)(ours_in, rois)
    theirs = tv_ops.roi_align(theirs_in, rois, (7, 6), scale, sampling, aligned)
    assert torch.equal(ours, theirs)
    weights = torch.randn_like(ours)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    assert torch.equal(ours_in.grad, theirs_in.grad)


@needs_standin
@pytest.mark.parametrize('aligned', [True, False])
def test_roi_align_equals_loop_reference(aligned: bool) -> None:
    feature = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    rois = torch.tensor([[0, 1., 1., 6., 5.], [1, -2., 3., 12., 10.], [0, 4., 4., 4.5, 4.2]],
                        dtype=torch.float64)
    for sampling in (0, 2):
        ours = mmcv.ops.roi_align(feature, rois, (3, 2), 1., sampling, 'avg', aligned)
        reference = _reference_roi_align(feature, rois, (3, 2), 1., sampling, aligned)
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)


@needs_standin
def test_roi_align_gradcheck() -> None:
    feature = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.3, 0.7, 6.2, 5.1]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: mmcv.ops.roi_align(x, rois, (2, 2), 1., 2, 'avg', True), (feature,))


def test_roi_align_rejects_max_pool_in_one_line() -> None:
    feature, rois = torch.randn(1, 2, 8, 8), _rois(2, 1, 8)
    output = feature.new_zeros(2, 2, 2, 2)
    with pytest.raises(RuntimeError) as excinfo:
        mmcv_ops.roi_align_forward(feature, rois, output, output, output, aligned_height=2,
                                   aligned_width=2, spatial_scale=1., sampling_ratio=0,
                                   pool_mode=0, aligned=True)
    _one_line_error(excinfo, "'roi_align_forward'", "pool_mode='max'", 'install')


# ------------------------------------------------------------------- sigmoid focal loss
@needs_standin
def test_sigmoid_focal_loss_equals_mmdet_python_loss() -> None:
    """mmdet calls mmcv's focal loss on CUDA only: same values and grads as its CPU path."""
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss
    logits = torch.randn(40, 6, dtype=torch.float64) * 3
    labels = torch.randint(0, 7, (40,))  # 6 = background
    ours_in, theirs_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = mmcv.ops.sigmoid_focal_loss(ours_in, labels, 2.0, 0.25, None, 'none')
    one_hot = torch.nn.functional.one_hot(labels, 7)[:, :6].double()
    theirs = py_sigmoid_focal_loss(theirs_in, one_hot, None, 2.0, 0.25, 'none')
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    ours.sum().backward()
    theirs.sum().backward()
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, rtol=1e-10, atol=1e-12)


def test_sigmoid_focal_loss_rejects_class_weights_in_one_line() -> None:
    logits = torch.randn(4, 3)
    with pytest.raises(RuntimeError) as excinfo:
        mmcv_ops.sigmoid_focal_loss_forward(logits, torch.zeros(4, dtype=torch.long),
                                            torch.ones(3), torch.empty(4, 3), 2., .25)
    _one_line_error(excinfo, "'sigmoid_focal_loss_forward'", 'weight', 'install')


# ------------------------------------------------------------- stand-in only, one line
@needs_standin
def test_other_ops_still_fail_in_one_line() -> None:
    with pytest.raises(RuntimeError) as excinfo:
        sys.modules['mmcv._ext'].deform_conv_forward()
    _one_line_error(excinfo, "'deform_conv_forward'", 'install')


def test_fills_only_the_standin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real compiled ops are never shadowed; in a stand-in only missing ops are set."""
    real = types.ModuleType('mmcv._ext')
    real.nms = len  # a "compiled" op
    monkeypatch.setitem(sys.modules, 'mmcv._ext', real)
    assert mmcv_ops.install_torchvision_ops() == []
    assert real.nms is len and not hasattr(real, 'roi_align_forward')

    standin = _make_mmcv_ext_standin()
    standin.nms = len  # already provided by someone else
    monkeypatch.setitem(sys.modules, 'mmcv._ext', standin)
    installed = mmcv_ops.install_torchvision_ops()
    assert standin.nms is len and 'nms' not in installed
    assert standin.roi_align_forward is mmcv_ops.roi_align_forward
    monkeypatch.delitem(sys.modules, 'mmcv._ext')
    assert mmcv_ops.install_torchvision_ops() == []


# ----------------------------------------------------------------------------- configs
def _load(name: str) -> Config:
    cfg = Config.fromfile(str(CONFIGS / name))
    cfg.model.backbone.init_cfg = None  # nothing to load in tests
    return cfg


def _build(cfg: Config) -> torch.nn.Module:
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


@pytest.mark.parametrize('name', D1_CONFIGS)
def test_d1_configs_build_as_shipped(name: str) -> None:
    cfg = Config.fromfile(str(CONFIGS / name))
    assert cfg.model.backbone.init_cfg.checkpoint == 'pretrained/volo_d1_224.pth'
    assert cfg.optim_wrapper.constructor == 'VOLOLayerDecayOptimWrapperConstructor'
    assert 'mmvolo.runtime' in cfg.custom_imports.imports
    cfg.model.backbone.init_cfg = None
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    model = MODELS.build(cfg.model)
    assert model.backbone.arch_settings['layers'] == ARCH_ZOO['d1']['layers']
    assert list(cfg.model.neck.in_channels) == model.backbone.out_channels


@pytest.mark.parametrize('name', ['retinanet_volo-d3_fpn_1x_coco.py',
                                  'mask-rcnn_volo-d3_fpn_1x_coco.py'])
def test_d3_configs_inherit_d1(name: str) -> None:
    cfg = Config.fromfile(str(CONFIGS / name))
    d1 = Config.fromfile(str(CONFIGS / name.replace('d3', 'd1')))
    assert cfg.model.backbone.arch == 'd3'
    assert cfg.model.backbone.init_cfg.checkpoint == 'pretrained/volo_d3_224.pth'
    # out_channels depend only on the widths: the D3 widths with one block per group
    widths = VOLO(arch=dict(ARCH_ZOO['d3'], layers=(1, 1, 1, 1))).out_channels
    assert list(cfg.model.neck.in_channels) == widths == [256, 256, 512, 512]
    assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.95
    assert cfg.model.roi_head == d1.model.roi_head if 'mask' in name else \
        cfg.model.bbox_head == d1.model.bbox_head


# ------------------------------------------------------------- train step + inference
def _tiny_cfg(name: str, tiny_arch: dict) -> Config:
    """The shipped config with a tiny VOLO, no checkpoint, score_thr 0, fewer proposals."""
    cfg = _load(name)
    cfg.model.backbone.arch = tiny_arch
    cfg.model.backbone.drop_path_rate = 0.
    cfg.model.neck.in_channels = VOLO(arch=tiny_arch).out_channels
    test_cfg = cfg.model.test_cfg
    if 'rcnn' in test_cfg:
        cfg.model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
        cfg.model.train_cfg.rcnn.sampler.num = 64
        test_cfg.rpn.update(nms_pre=200, max_per_img=50)
        test_cfg.rcnn.update(score_thr=0., max_per_img=20)
    else:
        test_cfg.update(score_thr=0., max_per_img=20)
    return cfg


def _batch(model: torch.nn.Module, training: bool) -> dict:
    """Two random IMG x IMG images with two boxes and masks each, preprocessed."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    boxes = torch.tensor([[10., 20., 100., 120.], [50., 60., 120., 110.]])
    masks = torch.zeros(2, IMG, IMG, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
        mask[y1:y2, x1:x2] = 1
    samples = []
    for _ in range(2):
        sample = DetDataSample(metainfo=dict(img_shape=(IMG, IMG), ori_shape=(IMG, IMG),
                                             pad_shape=(IMG, IMG), scale_factor=(1., 1.)))
        sample.gt_instances = InstanceData(bboxes=boxes, labels=torch.tensor([1, 5]),
                                           masks=BitmapMasks(masks.numpy(), IMG, IMG))
        samples.append(sample)
    inputs = [torch.randint(0, 256, (3, IMG, IMG)).float() for _ in range(2)]
    return model.data_preprocessor(dict(inputs=inputs, data_samples=samples), training)


@pytest.fixture
def op_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[collections.Counter]:
    """Counts calls of the torchvision-backed mmcv._ext ops (real ops: counted too)."""
    calls: collections.Counter = collections.Counter()
    ext = sys.modules['mmcv._ext']

    def counting(name: str, op: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return op(*args, **kwargs)
        return wrapper

    for name in mmcv_ops.TORCHVISION_OPS:
        monkeypatch.setattr(ext, name, counting(name, getattr(ext, name)))
    yield calls


@pytest.mark.parametrize('name', D1_CONFIGS)
def test_train_step_and_inference(name: str, tiny_arch: dict,
                                  op_calls: collections.Counter) -> None:
    cfg = _tiny_cfg(name, tiny_arch)
    model = _build(cfg)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)  # VOLO layer decay
    with_masks = 'mask' in name

    model.train()
    losses = model(**_batch(model, True), mode='loss')
    loss = sum(sum(v) if isinstance(v, list) else v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(loss)
    loss.backward()
    stem = next(model.backbone.patch_embed.parameters()).grad
    assert stem is not None and torch.isfinite(stem).all() and stem.abs().sum() > 0
    optim_wrapper.step()
    if with_masks:  # RPN proposals (nms), RoI features and their gradients (roi_align)
        assert op_calls['nms'] > 0 and op_calls['roi_align_backward'] > 0
    op_calls.clear()

    model.eval()
    with torch.no_grad():
        results = model(**_batch(model, False), mode='predict')
    assert op_calls['nms'] > 0
    for result in results:
        predicted = result.pred_instances
        assert 0 < len(predicted) <= 20 and predicted.bboxes.shape[1] == 4
        assert torch.isfinite(predicted.bboxes).all()
        if with_masks:
            assert predicted.masks.shape == (len(predicted), IMG, IMG)
            assert predicted.masks.dtype == torch.bool
