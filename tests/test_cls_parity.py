"""VOLO classification inside mmpretrain: exact parity with timm's volo_d1 logits.

The head code is one for every variant; D2-D5 backbones are held to timm once, block by
block, in test_volo_backbone.py, and every classification config is built in
test_cls_configs.py.

Every model here has random weights (timm ``pretrained=False``); checkpoints are written to
tmp_path with the head kept by :func:`mmvolo.converter.convert_checkpoint`, then loaded into
mmpretrain's ``ImageClassifier`` built from ``configs/volo_cls``.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

timm = pytest.importorskip('timm')
pytest.importorskip('mmpretrain')

from mmengine.config import Config  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402
from timm_volo import random_timm_volo  # noqa: E402

import mmvolo  # noqa: E402,F401
from mmvolo.converter import convert_checkpoint  # noqa: E402
from mmvolo.models.embed import resize_pos_embed  # noqa: E402
from mmvolo.models.weights import CheckpointError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / 'configs' / 'volo_cls'
LOGITS_TOLERANCE = 1e-4


def build_classifier(config: str, checkpoint: Path | None = None, init: bool = True,
                     quiet: bool = False) -> torch.nn.Module:
    """mmpretrain ImageClassifier from configs/volo_cls/<config>, built under the
    mmpretrain scope; backbone and head load ``checkpoint`` through their init_cfg.

    ``quiet`` initialises backbone and head directly, skipping mmengine's per-parameter
    init report of the whole model (seconds for D4/D5)."""
    from mmpretrain.registry import MODELS

    cfg = Config.fromfile(str(CONFIGS / config))  # runs custom_imports (mmvolo, mmvolo.cls)
    model_cfg = cfg.model
    model_cfg.data_preprocessor = cfg.data_preprocessor
    if checkpoint is not None:
        for part in (model_cfg.backbone, model_cfg.head):
            part.init_cfg = dict(type='Pretrained', checkpoint=str(checkpoint))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(model_cfg)
    if init and quiet:
        model.backbone.init_weights()
        model.head.init_weights()
    elif init:
        model.init_weights()
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


@pytest.fixture(scope='module')
def image() -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope='module')
def d1(tmp_path_factory, image):
    """timm VOLO-D1, its logits, its flat .pth and the --keep-head conversion."""
    folder = tmp_path_factory.mktemp('d1')
    model = random_timm_volo('d1')
    with torch.no_grad():
        logits = model(image)
    source = folder / 'd1_224.pth'
    torch.save(model.state_dict(), source)
    converted = folder / 'volo-d1_in1k-224.pth'
    convert_checkpoint(source, converted, keep_head=True)
    return dict(state_dict=model.state_dict(), logits=logits, source=source,
                converted=converted)


def test_d1_logits_match_timm_via_init_cfg(d1, image):
    model = build_classifier('volo-d1_in1k-224.py', d1['converted'])
    with torch.no_grad():
        logits = model(image, mode='tensor')
    diff = max_diff(logits, d1['logits'])
    print(f'\nd1 logits max abs diff: {diff:.3e}')
    assert diff <= LOGITS_TOLERANCE


def test_d1_logits_match_timm_via_load_from(d1, image):
    """The --keep-head file loads as a whole-model checkpoint (tools/test.py, load_from)."""
    model = build_classifier('volo-d1_in1k-224.py', init=False)
    load_checkpoint(model, str(d1['converted']), map_location='cpu', strict=True)
    with torch.no_grad():
        logits = model.eval()(image, mode='tensor')
    assert max_diff(logits, d1['logits']) <= LOGITS_TOLERANCE


def test_finetune_config_at_384_resizes_pos_embed(d1):
    """volo-d1_in1k-384.py from 224 weights: pos_embed 14x14 -> 24x24 on load, runs."""
    model = build_classifier('volo-d1_in1k-384.py', d1['converted'], quiet=True)
    pos_embed = model.backbone.pos_embed
    assert tuple(pos_embed.shape) == (1, 24, 24, 384)
    expected = resize_pos_embed(d1['state_dict']['pos_embed'], (24, 24))
    assert torch.equal(pos_embed.data, expected)
    assert torch.equal(model.head.cls_token.data, d1['state_dict']['cls_token'])
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 384, 384), mode='tensor')
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_head_loads_other_class_count_and_rejects_headless_file(d1, tmp_path):
    from mmvolo.cls import VOLOClsHead

    head = VOLOClsHead(10, 384, 12, init_cfg=dict(type='Pretrained',
                                                   checkpoint=str(d1['converted'])))
    head.init_weights()
    assert head.head.weight.shape == (10, 384)
    assert torch.equal(head.post_network[1].attn.kv.weight.data,
                       d1['state_dict']['post_network.1.attn.kv.weight'])
    backbone_only = tmp_path / 'backbone.pth'
    convert_checkpoint(d1['source'], backbone_only)
    head = VOLOClsHead(1000, 384, 12, init_cfg=dict(type='Pretrained',
                                                     checkpoint=str(backbone_only)))
    with pytest.raises(CheckpointError, match='no VOLO classification head.*--keep-head'):
        head.init_weights()


def test_training_step_losses_and_gradients():
    """CE on the class-token logits plus the max-pooled aux loss; every part gets gradients."""
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample

    tiny = dict(layers=(1, 1, 1, 1), embed_dims=(32, 64, 64, 64), num_heads=(1, 2, 2, 2))
    cfg = dict(type='ImageClassifier',
               backbone=dict(type='VOLO', arch=tiny, img_size=64, feature_pyramid=False,
                             out_indices=(3, )),
               head=dict(type='VOLOClsHead', num_classes=5, in_channels=64, num_heads=2,
                         cal_acc=True))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg)
    model.init_weights()
    model.train()
    samples = [DataSample().set_gt_label(label) for label in (0, 3)]
    losses = model(torch.randn(2, 3, 64, 64), samples, mode='loss')
    assert set(losses) == {'loss', 'loss_aux', 'accuracy_top-1'}
    sum(value for key, value in losses.items() if 'loss' in key).backward()
    for name in ('head.cls_token', 'head.aux_head.weight', 'head.head.weight',
                 'head.post_network.0.attn.q.weight', 'backbone.pos_embed'):
        assert model.get_parameter(name).grad is not None, name
