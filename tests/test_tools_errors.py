"""Bad input to the tools ends in one clear line and an exit code, never a traceback.

The checks themselves (:mod:`mmvolo.apis.checks`) are tested directly; one subprocess per
case confirms what a user sees (they run concurrently to keep the suite short).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from tool_helpers import REPO, TOY_CONFIG, make_tiny_data, single_line_error, tool_command, tool_env

from mmvolo.apis import (
    UsageError,
    check_arch,
    check_checkpoint,
    check_data_roots,
    check_seg_config,
    load_config,
)

MISSING_ROOT = 'data/ade/ADEChallengeData2016'
ADE_CONFIG_TEXT = f'''
_base_ = [{str(TOY_CONFIG)!r}]
train_dataloader = dict(dataset=dict(type='ADE20KDataset', data_root={MISSING_ROOT!r}))
'''
CLS_CONFIG_TEXT = '''
default_scope = 'mmpretrain'
custom_imports = dict(imports=['mmvolo'], allow_failed_imports=False)
model = dict(type='ImageClassifier', backbone=dict(type='VOLO', arch='d1'),
             head=dict(type='LinearClsHead', num_classes=10, in_channels=384))
train_dataloader = dict(batch_size=2, dataset=dict(type='ImageNet', data_root='data/x'))
test_dataloader = train_dataloader
test_evaluator = dict(type='Accuracy')
train_cfg = dict(by_epoch=True, max_epochs=1)
test_cfg = dict()
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1))
'''


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> dict[str, Path]:
    """Configs, data and checkpoints for every bad-input case."""
    root = tmp_path_factory.mktemp('errors')
    data = make_tiny_data(root / 'toy', num_train=2, num_val=2)
    paths = {'root': root, 'data': data}
    texts = {
        'ade': ADE_CONFIG_TEXT,
        'cls': CLS_CONFIG_TEXT,
        'empty': 'work_dir = "x"\n',
        'toy': f"_base_ = [{str(TOY_CONFIG)!r}]\ndata_root = {str(data)!r}\n"
               "train_dataloader = dict(dataset=dict(data_root=data_root))\n"
               "val_dataloader = dict(dataset=dict(data_root=data_root))\n"
               "test_dataloader = val_dataloader\n",
    }
    for name, text in texts.items():
        paths[name] = root / f'{name}.py'
        paths[name].write_text(text)
    paths['resnet_ckpt'] = root / 'resnet_seg.pth'
    torch.save({'state_dict': {'backbone.layer1.0.conv1.weight': torch.zeros(8, 8, 3, 3),
                               'decode_head.conv_seg.weight': torch.zeros(6, 8, 1, 1)},
                'meta': {}}, paths['resnet_ckpt'])
    paths['backbone_ckpt'] = root / 'volo_backbone.pth'
    torch.save({'patch_embed.proj.weight': torch.zeros(32, 16, 4, 4),
                'network.0.0.attn.attn.weight': torch.zeros(81, 32)}, paths['backbone_ckpt'])
    return paths


# ------------------------------------------------------------------------ the checks, direct
def test_missing_data_root_names_the_fix(files):
    cfg = load_config(str(files['ade']))
    with pytest.raises(UsageError) as error:
        check_data_roots(cfg, ['train_dataloader'])
    assert str(error.value) == (
        f'data root {MISSING_ROOT} not found: download ADE20K there or set --cfg-options '
        'train_dataloader.dataset.data_root=...')


def test_missing_toy_data_says_how_to_generate_it(files):
    cfg = load_config(str(TOY_CONFIG), {'train_dataloader.dataset.data_root': '/nonexistent'})
    with pytest.raises(UsageError, match='make_toy_dataset.py /nonexistent'):
        check_data_roots(cfg, ['train_dataloader'])


def test_present_data_root_passes(files):
    check_data_roots(load_config(str(files['toy'])), ['train_dataloader', 'test_dataloader'])


def test_config_without_model(files):
    cfg = load_config(str(files['empty']))
    with pytest.raises(UsageError, match='defines no `model`'):
        check_seg_config(cfg, 'empty.py', 'train')


def test_classification_config_is_refused(files):
    cfg = load_config(str(files['cls']))
    with pytest.raises(UsageError, match="'ImageClassifier'.*not an mmseg segmentor"):
        check_seg_config(cfg, 'cls.py', 'test')


def test_segmentation_config_passes(files):
    for mode in ('train', 'test', 'infer'):
        check_seg_config(load_config(str(files['toy'])), 'toy.py', mode)


def test_unknown_arch_gives_the_backbone_message(files):
    cfg = load_config(str(files['toy']), {'model.backbone.arch': 'd9'})
    with pytest.raises(UsageError, match="model.backbone.arch: unknown VOLO arch 'd9'"):
        check_arch(cfg)


def test_checkpoint_of_another_model_says_what_it_is(files):
    cfg = load_config(str(files['toy']))
    with pytest.raises(UsageError, match='not a VOLO segmentor.*looks like a ResNet') as error:
        check_checkpoint(str(files['resnet_ckpt']), cfg)
    assert error.value.exit_code == 1
    with pytest.raises(UsageError, match='VOLO backbone weights only'):
        check_checkpoint(str(files['backbone_ckpt']), cfg)


def test_unreadable_config(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text('model = dict(\n')
    with pytest.raises(UsageError, match='cannot read config'):
        load_config(str(bad))
    with pytest.raises(UsageError, match='not found'):
        load_config(str(tmp_path / 'absent.py'))


# ------------------------------------------------------------------ what a user sees (CLI)
def _cases(files: dict[str, Path]) -> dict[str, tuple[list[str], int, str]]:
    """name: (command, exit code, text the error line contains)."""
    toy, data = files['toy'], files['data']
    return {
        'missing data root': (tool_command('train.py', files['ade']), 2,
                              f'data root {MISSING_ROOT} not found: download ADE20K there'),
        'no model in config': (tool_command('train.py', files['empty']), 2,
                               'defines no `model`'),
        'classification config': (tool_command('test.py', files['cls'], files['resnet_ckpt']),
                                  2, 'not an mmseg segmentor'),
        'unknown arch': (tool_command('train.py', toy, '--cfg-options',
                                      'model.backbone.arch=d9'), 2, "unknown VOLO arch 'd9'"),
        'foreign checkpoint': (tool_command('test.py', toy, files['resnet_ckpt']), 1,
                               'looks like a ResNet'),
        'missing checkpoint': (tool_command('inference.py', toy, files['root'] / 'no.pth',
                                            data / 'images' / 'validation', '--out-dir',
                                            files['root'] / 'out'), 2, 'not found'),
    }


@pytest.fixture(scope='module')
def cli_results(files) -> dict[str, tuple[subprocess.CompletedProcess, int, str]]:
    running = {name: (subprocess.Popen(command, cwd=REPO, env=tool_env(),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True), code, text)
               for name, (command, code, text) in _cases(files).items()}
    results = {}
    for name, (process, code, text) in running.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = (subprocess.CompletedProcess(process.args, process.returncode,
                                                     stdout, stderr), code, text)
    return results


@pytest.mark.parametrize('case', ['missing data root', 'no model in config',
                                  'classification config', 'unknown arch',
                                  'foreign checkpoint', 'missing checkpoint'])
def test_cli_reports_one_line(cli_results, case):
    result, code, text = cli_results[case]
    line = single_line_error(result)
    assert text in line, line
    assert result.returncode == code, result.stderr
