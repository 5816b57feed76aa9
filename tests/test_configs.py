"""The shipped UperNet-VOLO configs: names, settings, pipelines and models that build."""
from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from tool_helpers import run_tool_in_process

import mmvolo  # noqa: F401  (registers VOLO and the optimizer constructor)
from mmvolo.models import ARCH_ZOO
from mmvolo.utils import build_model_for_analysis

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs' / 'volo'
NAME = re.compile(r'^volo-(?P<arch>d[1-5])_upernet_8xb(?P<batch>\d)-(?P<iters>\d+)k_'
                  r'(?P<dataset>ade20k|cityscapes)-(?P<height>\d+)x(?P<width>\d+)\.py$')
PAPER_CONFIGS = sorted(path for path in CONFIG_DIR.glob('*.py') if NAME.match(path.name))
NUM_CLASSES = {'ade20k': 150, 'cityscapes': 19}
SETTINGS = {  # dataset: (iterations in thousands, crop sizes, images per GPU)
    'ade20k': (160, {(512, 512): 2}),
    'cityscapes': (80, {(512, 1024): 2, (1024, 1024): 1}),
}


def config_id(path: Path) -> str:
    return path.stem


@cache
def load(path: Path) -> Config:
    return Config.fromfile(str(path))


def expected(path: Path) -> dict:
    """Settings the file name promises."""
    match = NAME.match(path.name)
    return dict(arch=match['arch'], batch=int(match['batch']), iters=int(match['iters']) * 1000,
                dataset=match['dataset'], crop=(int(match['height']), int(match['width'])))


def test_every_variant_and_setting_is_shipped():
    names = {path.name for path in PAPER_CONFIGS}
    assert len(names) == 15
    for arch in ARCH_ZOO:
        assert f'volo-{arch}_upernet_8xb2-160k_ade20k-512x512.py' in names
        assert f'volo-{arch}_upernet_8xb2-80k_cityscapes-512x1024.py' in names
        assert f'volo-{arch}_upernet_8xb1-80k_cityscapes-1024x1024.py' in names


@pytest.mark.parametrize('path', PAPER_CONFIGS, ids=config_id)
def test_config_matches_its_name(path: Path):
    cfg, want = load(path), expected(path)
    iters, crops = SETTINGS[want['dataset']]
    assert want['iters'] == iters * 1000 and crops[want['crop']] == want['batch']
    assert cfg.default_scope == 'mmseg'
    assert 'mmvolo' in cfg.custom_imports['imports']
    assert cfg.crop_size == want['crop']
    assert cfg.train_cfg.max_iters == want['iters']
    assert cfg.train_dataloader.batch_size == want['batch']
    assert cfg.model.data_preprocessor.size == want['crop']
    crop_steps = [step for step in cfg.train_pipeline if step['type'] == 'RandomCrop']
    assert [step['crop_size'] for step in crop_steps] == [want['crop']]


@pytest.mark.parametrize('path', PAPER_CONFIGS, ids=config_id)
def test_model_settings(path: Path):
    model, want = load(path).model, expected(path)
    arch = ARCH_ZOO[want['arch']]
    dims = arch['embed_dims']
    assert model.backbone.type == 'VOLO' and model.backbone.arch == want['arch']
    assert tuple(model.backbone.img_size) == want['crop']
    assert model.decode_head.in_channels == [dims[0], dims[0], dims[-1], dims[-1]]
    assert model.auxiliary_head.in_channels == dims[-1]
    for head in (model.decode_head, model.auxiliary_head):
        assert head.num_classes == NUM_CLASSES[want['dataset']]
        assert head.norm_cfg.type == 'SyncBN'
        assert head.loss_decode.avg_non_ignore is True
    init = model.backbone.init_cfg
    assert init.type == 'Pretrained'
    assert init.checkpoint == f"pretrained/volo_{want['arch']}_224.pth"
    assert '://' not in init.checkpoint


@pytest.mark.parametrize('path', PAPER_CONFIGS, ids=config_id)
def test_sliding_window_test_mode(path: Path):
    test_cfg, crop = load(path).model.test_cfg, expected(path)['crop']
    assert test_cfg.mode == 'slide'
    assert tuple(test_cfg.crop_size) == crop
    assert all(0 < stride <= size for stride, size in zip(test_cfg.stride, crop))


@pytest.mark.parametrize('path', PAPER_CONFIGS, ids=config_id)
def test_optimizer_and_schedule(path: Path):
    cfg, want = load(path), expected(path)
    wrapper = cfg.optim_wrapper
    assert wrapper.constructor == 'VOLOLayerDecayOptimWrapperConstructor'
    assert wrapper.optimizer.type == 'AdamW'
    assert 6e-5 <= wrapper.optimizer.lr <= 1e-4
    assert 0.01 <= wrapper.optimizer.weight_decay <= 0.05
    assert 0.5 < wrapper.paramwise_cfg.layer_decay_rate <= 1.0
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.begin, warmup.end) == ('LinearLR', 0, 1500)
    assert (poly.type, poly.begin, poly.end) == ('PolyLR', 1500, want['iters'])


# ------------------------------------------------------------------------------ pipelines
def write_sample(root: Path, dataset: str) -> dict:
    """A random image + label pair, in the file layout the dataset's pipeline expects."""
    height, width = (1024, 2048) if dataset == 'cityscapes' else (384, 600)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = rng.integers(0, NUM_CLASSES[dataset], (height, width), dtype=np.uint8)
    cv2.imwrite(str(root / 'img.png'), image)
    cv2.imwrite(str(root / 'seg.png'), label)
    return dict(img_path=str(root / 'img.png'), seg_map_path=str(root / 'seg.png'),
                reduce_zero_label=dataset == 'ade20k', seg_fields=[], label_map=None)


def pipeline_configs() -> list[Path]:
    """One D1 config per (dataset, crop): the pipelines do not depend on the variant."""
    return [path for path in PAPER_CONFIGS if expected(path)['arch'] == 'd1']


@pytest.mark.parametrize('path', pipeline_configs(), ids=config_id)
def test_pipelines_build_and_run(path: Path, tmp_path: Path):
    from mmcv.transforms import Compose

    cfg, want = load(path), expected(path)
    init_default_scope('mmseg')
    sample = write_sample(tmp_path, want['dataset'])
    train = Compose(cfg.train_pipeline)(dict(sample))
    crop_h, crop_w = want['crop']
    assert train['inputs'].shape[0] == 3
    assert train['inputs'].shape[1] <= crop_h and train['inputs'].shape[2] <= crop_w
    test = Compose(cfg.test_pipeline)(dict(sample))
    if want['dataset'] == 'cityscapes':  # kept at 1024x2048, tiled by the sliding window
        assert tuple(test['inputs'].shape[1:]) == (1024, 2048)
    else:  # short side 512
        assert min(test['inputs'].shape[1:]) == 512


# ------------------------------------------------------------------------------ models
def build_cpu_model(cfg: Config) -> torch.nn.Module:
    """cfg.model built on CPU: no checkpoint, SyncBN as BN (the tools' one builder)."""
    return build_model_for_analysis(cfg, outlook_impl=None)


@pytest.mark.parametrize('path', PAPER_CONFIGS, ids=config_id)
def test_model_builds(path: Path):
    """The structure the config names (built on the meta device: shapes, no values)."""
    cfg, want = load(path), expected(path)
    with torch.device('meta'):
        model = build_cpu_model(cfg)
    dims = ARCH_ZOO[want['arch']]['embed_dims']
    assert model.backbone.out_channels == [dims[0], dims[0], dims[-1], dims[-1]]
    assert model.decode_head.num_classes == NUM_CLASSES[want['dataset']]
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert tuple(model.backbone.pos_embed.shape[1:3]) == (want['crop'][0] // 16,
                                                          want['crop'][1] // 16)


def test_d1_forward_small_input():
    path = CONFIG_DIR / 'volo-d1_upernet_8xb2-160k_ade20k-512x512.py'
    model = build_cpu_model(load(path)).eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 64, 64), mode='tensor')
    assert logits.shape == (1, 150, 16, 16)
    assert torch.isfinite(logits).all()


def test_print_config_resolves_bases_and_options(capsys):
    path = CONFIG_DIR / 'volo-d5_upernet_8xb2-160k_ade20k-512x512.py'
    result = run_tool_in_process('misc/print_config.py', path, '--cfg-options',
                                 'model.backbone.drop_path_rate=0.5', capsys=capsys)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "arch='d5'" in text and 'drop_path_rate=0.5' in text
    assert "type='ADE20KDataset'" in text and 'max_iters=160000' in text
