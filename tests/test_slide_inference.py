"""Batched sliding-window inference (``BatchedSlideEncoderDecoder``, ``test_cfg.crop_batch``).

Pins down: the batched windows give mmseg's own ``EncoderDecoder.slide_inference`` logits
(same weights, within 1e-5) for odd image sizes, batches of 1 and 2, images smaller than the
crop and ``crop_batch`` 1, 3 and more than the window count; mmseg's window grid with the
border windows shifted inside the image; ``crop_batch`` crops (at most) per forward pass; the
metas mmseg leaves behind; an invalid ``crop_batch`` is a one-line ValueError; and the
Cityscapes configs use it. (``import mmvolo`` registers the name without importing mmseg:
test_runtime.py, with the plugin's other import-time guarantees.)
"""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import mmvolo  # noqa: F401  (registers BatchedSlideEncoderDecoder)
from mmvolo.utils import build_model_for_analysis

ROOT = Path(__file__).resolve().parents[1]
CROP, STRIDE = (48, 64), (32, 40)


def tiny_model(tiny_arch, crop_batch=None):
    """UperNet + tiny VOLO, 5 classes, sliding windows of 48x64 with stride 32x40."""
    cfg = Config.fromfile(str(ROOT / 'configs/_base_/models/upernet_volo.py'))
    model = cfg.model
    model.type = 'BatchedSlideEncoderDecoder'
    model.backbone.update(arch=tiny_arch, img_size=CROP)
    model.decode_head.update(in_channels=[16, 16, 32, 32], channels=32, num_classes=5)
    model.auxiliary_head.update(in_channels=32, channels=16, num_classes=5)
    model.test_cfg = dict(mode='slide', crop_size=CROP, stride=STRIDE)
    if crop_batch is not None:
        model.test_cfg['crop_batch'] = crop_batch
    segmentor = build_model_for_analysis(cfg, outlook_impl=None)
    segmentor.init_weights()
    return segmentor.eval()


@pytest.fixture(scope='module')
def model():
    from conftest import TINY_ARCH

    torch.manual_seed(0)
    return tiny_model(dict(TINY_ARCH))


@pytest.fixture(scope='module')
def mmseg_reference(model):
    """``shape -> (inputs, mmseg's slide logits, metas after it)``, computed once per shape."""
    cache = {}

    def reference(shape):
        if shape not in cache:
            inputs = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
            cache[shape] = (inputs, *mmseg_slide(model, inputs))
        return cache[shape]

    return reference


def metas_for(inputs):
    shape = tuple(inputs.shape[2:])
    return [dict(img_shape=shape, ori_shape=shape, pad_shape=shape) for _ in inputs]


def mmseg_slide(model, inputs):
    from mmseg.models.segmentors import EncoderDecoder

    metas = metas_for(inputs)
    with torch.no_grad():
        return EncoderDecoder.slide_inference(model, inputs, metas), metas


def batched_slide(model, inputs, crop_batch):
    model.test_cfg['crop_batch'] = crop_batch
    metas = metas_for(inputs)
    try:
        with torch.no_grad():
            return model.slide_inference(inputs, metas), metas
    finally:
        model.test_cfg.pop('crop_batch')


def test_windows_are_mmsegs_with_border_windows_shifted_inside():
    from mmvolo.models.segmentors.batched_slide import slide_windows

    rows = sorted({(y1, y2) for y1, y2, _, _ in slide_windows((97, 131), CROP, STRIDE)})
    cols = sorted({(x1, x2) for _, _, x1, x2 in slide_windows((97, 131), CROP, STRIDE)})
    assert rows == [(0, 48), (32, 80), (49, 97)]
    assert cols == [(0, 64), (40, 104), (67, 131)]
    # smaller than the crop: one window, the whole image; exactly the crop: one window
    assert list(slide_windows((40, 50), CROP, STRIDE)) == [(0, 40, 0, 50)]
    assert list(slide_windows(CROP, CROP, STRIDE)) == [(0, 48, 0, 64)]
    assert list(slide_windows((40, 131), CROP, STRIDE)) == [(0, 40, 0, 64), (0, 40, 40, 104),
                                                             (0, 40, 67, 131)]


@pytest.mark.parametrize('shape', [(1, 3, 97, 131), (2, 3, 97, 131), (2, 3, 40, 131),
                                   (1, 3, 40, 50)], ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('crop_batch', [1, 3, 100])
def test_equals_mmseg_slide_inference(model, mmseg_reference, shape, crop_batch):
    inputs, expected, expected_metas = mmseg_reference(shape)
    got, metas = batched_slide(model, inputs, crop_batch)
    assert got.shape == (shape[0], 5, *shape[2:])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert metas == expected_metas  # mmseg leaves metas[0]['img_shape'] = the crop shape


@pytest.mark.parametrize('crop_batch, batch', [(1, 1), (4, 1), (4, 2), (9, 1), (50, 2)])
def test_forward_passes_hold_crop_batch_crops(model, crop_batch, batch):
    inputs = torch.randn(batch, 3, 97, 131)
    sizes = []
    original = model.encode_decode

    def spy(crops, metas):
        assert len(metas) == len(crops) and crops.shape[2:] == CROP
        sizes.append(len(crops))
        return original(crops, metas)

    model.encode_decode = spy
    try:
        batched_slide(model, inputs, crop_batch)
    finally:
        del model.encode_decode
    crops = 9 * batch
    assert sum(sizes) == crops and len(sizes) == math.ceil(crops / crop_batch)
    assert max(sizes) == min(crop_batch, crops)


def test_predict_path_uses_it_and_keeps_mmsegs_without_crop_batch(model):
    from mmseg.structures import SegDataSample

    inputs = torch.randn(2, 3, 97, 131)
    samples = []
    for meta in metas_for(inputs):
        sample = SegDataSample()
        sample.set_metainfo(meta)
        samples.append(sample)
    calls = []
    original = model.encode_decode
    model.encode_decode = lambda crops, metas: calls.append(len(crops)) or original(crops, metas)
    try:
        with torch.no_grad():
            plain = model.predict(inputs, samples)  # no crop_batch: mmseg's, N crops a call
            model.test_cfg['crop_batch'] = 6
            batched = model.predict(inputs, samples)
    finally:
        model.test_cfg.pop('crop_batch', None)
        del model.encode_decode
    assert calls == [2] * 9 + [6, 6, 6]
    for a, b in zip(plain, batched):
        torch.testing.assert_close(a.seg_logits.data, b.seg_logits.data, atol=1e-5, rtol=0)


@pytest.mark.parametrize('bad', [0, -2, 2.5, '4', True, [4]])
def test_invalid_crop_batch_is_a_one_line_value_error(tiny_arch, model, bad):
    with pytest.raises(ValueError, match=r'test_cfg\.crop_batch must be a positive integer') \
            as info:
        tiny_model(tiny_arch, crop_batch=bad)
    message = str(info.value)
    assert '\n' not in message and 'crop_batch=4' in message and repr(bad) in message
    model.test_cfg['crop_batch'] = bad  # changed after the build: refused at inference
    try:
        with pytest.raises(ValueError, match='crop_batch'):
            model.slide_inference(torch.randn(1, 3, 48, 64), metas_for(torch.randn(1, 3, 48, 64)))
    finally:
        model.test_cfg.pop('crop_batch')


def test_numpy_integer_crop_batch_is_accepted_and_the_model_pickles(tiny_arch):
    import numpy as np

    segmentor = tiny_model(tiny_arch, crop_batch=np.int64(2))
    clone = pickle.loads(pickle.dumps(segmentor))
    assert type(clone).__name__ == 'BatchedSlideEncoderDecoder'
    inputs = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        torch.testing.assert_close(clone.slide_inference(inputs, metas_for(inputs)),
                                   segmentor.slide_inference(inputs, metas_for(inputs)))


def test_the_segmentor_class_is_an_mmseg_encoder_decoder():
    from mmengine.registry import MODELS
    from mmseg.models.segmentors import EncoderDecoder

    from mmvolo.cli.checks import _is_segmentor
    from mmvolo.models import segmentors

    builder = MODELS.get('BatchedSlideEncoderDecoder')
    assert builder.segmentor_class() is segmentors.BatchedSlideEncoderDecoder
    assert issubclass(segmentors.BatchedSlideEncoderDecoder, EncoderDecoder)
    assert _is_segmentor('BatchedSlideEncoderDecoder')  # the tools accept such configs


CITYSCAPES = sorted((ROOT / 'configs/volo').glob('volo-d*_cityscapes-*.py'))


def test_cityscapes_configs_batch_their_windows():
    from mmvolo.cli.checks import check_seg_config
    from mmvolo.models.segmentors.batched_slide import slide_windows

    assert len(CITYSCAPES) == 10
    for path in CITYSCAPES:
        cfg = Config.fromfile(str(path))
        test_cfg = cfg.model.test_cfg
        assert cfg.model.type == 'BatchedSlideEncoderDecoder', path.name
        windows = len(list(slide_windows((1024, 2048), test_cfg.crop_size, test_cfg.stride)))
        # every window of a 1024x2048 image in full passes: crop_batch divides the count
        assert windows % test_cfg.crop_batch == 0, path.name
        check_seg_config(cfg, str(path), 'test')
