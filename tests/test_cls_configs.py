"""Every shipped mmpretrain classification config resolves and builds its model."""
import copy
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import mmvolo  # noqa: F401

CONFIGS = sorted((Path(__file__).resolve().parents[1] / 'configs/volo_cls').glob('volo-*.py'))


@pytest.mark.parametrize('path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_cls_config_builds_the_named_variant(path):
    from mmpretrain.registry import MODELS
    from mmpretrain.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    arch, size = re.match(r'volo-(d\d)_in1k-(\d+)', path.stem).groups()
    cfg = Config.fromfile(str(path))
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None
    model_cfg.head.pop('init_cfg', None)
    with torch.device('meta'):  # the structure: shapes, no values
        model = MODELS.build(model_cfg)
    assert model.backbone.arch_settings == mmvolo.models.resolve_arch(arch)
    assert tuple(model.backbone.pos_embed.shape[1:3]) == (int(size) // 16,) * 2
    assert model.head.in_channels == model.backbone.out_channels[-1]
    if size != '224':
        assert cfg.model.backbone.init_cfg.checkpoint == f'checkpoints/volo-{arch}_in1k-224.pth'
        assert cfg.model.head.init_cfg.checkpoint == cfg.model.backbone.init_cfg.checkpoint
