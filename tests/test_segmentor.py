"""VOLO inside an mmseg EncoderDecoder with UPerHead, built from the shipped base config."""
from pathlib import Path

import torch
from mmengine.config import Config

import mmvolo  # noqa: F401  (before mmseg.models: installs the mmcv-lite stand-in)

ROOT = Path(__file__).resolve().parents[1]


def build_segmentor(tiny_arch):
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(str(ROOT / 'configs/_base_/models/upernet_volo.py'))
    model = cfg.model
    model.backbone.arch = tiny_arch
    channels = [16, 16, 32, 32]
    model.decode_head.update(in_channels=channels, channels=32, num_classes=5,
                             norm_cfg=dict(type='BN'))
    model.auxiliary_head.update(in_channels=32, channels=16, num_classes=5,
                                norm_cfg=dict(type='BN'))
    model.data_preprocessor.size = (64, 64)
    segmentor = MODELS.build(model)
    segmentor.init_weights()
    return segmentor


def make_batch(num=2, size=(64, 64), num_classes=5):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    inputs, samples = [], []
    for _ in range(num):
        inputs.append(torch.randint(0, 255, (3, *size), dtype=torch.uint8))
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, *size)))
        sample.set_metainfo(dict(img_shape=size, ori_shape=size, pad_shape=size))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def test_upernet_loss_backward_predict(tiny_arch):
    segmentor = build_segmentor(tiny_arch)
    segmentor.train()
    data = segmentor.data_preprocessor(make_batch(), training=True)
    losses = segmentor(**data, mode='loss')
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(losses)
    total = sum(value for key, value in losses.items() if 'loss' in key)
    total.backward()
    assert segmentor.backbone.network[0][0].attn.attn.weight.grad is not None

    segmentor.eval()
    with torch.no_grad():
        batch = make_batch(num=1, size=(45, 61))
        data = segmentor.data_preprocessor(batch, training=False)
        predictions = segmentor(**data, mode='predict')
    assert predictions[0].pred_sem_seg.data.shape == (1, 45, 61)


def learnable_batch(num=2, size=(64, 64)):
    """Images whose colour blocks decide the label: class = brightest channel + 1."""
    batch = make_batch(num, size)
    for image, sample in zip(batch['inputs'], batch['data_samples']):
        blocks = torch.randint(0, 3, (1, size[0] // 16, size[1] // 16))
        labels = blocks.repeat_interleave(16, 1).repeat_interleave(16, 2)
        image.zero_()
        for channel in range(3):
            image[channel][labels[0] == channel] = 200
        sample.gt_sem_seg.data = labels + 1
    return batch


def test_loss_goes_down(tiny_arch):
    segmentor = build_segmentor(tiny_arch)
    segmentor.train()
    optimizer = torch.optim.AdamW(segmentor.parameters(), lr=3e-3)
    data = segmentor.data_preprocessor(learnable_batch(), training=True)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = segmentor(**data, mode='loss')['decode.loss_ce']
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses
