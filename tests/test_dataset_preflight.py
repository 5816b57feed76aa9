"""The data pre-flight check (mmvolo.datasets.preflight) through tools/train.py, tools/test.py
and tools/misc/check_dataset.py: broken data is one line naming the fix, before any model is
built; good data gets its full report."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import TINY_ARCH
from tool_helpers import (
    REPO,
    TOY_CONFIG,
    make_tiny_data,
    run_tool,
    run_tool_in_process,
    single_line_error,
)

from mmvolo.cli import load_config
from mmvolo.datasets.loader_settings import dataloader_problems, fit_persistent_workers
from mmvolo.datasets.preflight import check_datasets, effective_value, format_values
from mmvolo.datasets.toy_cityscapes import (
    TRAIN_ID_TO_LABEL_ID,
    ToyCityscapesSpec,
    generate_toy_cityscapes,
)
from mmvolo.models.single_value_bn import guard_single_value_batchnorm

CITYSCAPES = REPO / 'configs' / 'volo' / 'volo-d1_upernet_8xb2-80k_cityscapes-512x1024.py'
ADE20K = REPO / 'configs' / 'volo' / 'volo-d1_upernet_8xb2-160k_ade20k-512x512.py'
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


@pytest.fixture(scope='module')
def toy_data(tmp_path_factory) -> Path:
    """A clean ADE20K-layout toy set: 4 training + 2 validation images of 32x32."""
    return make_tiny_data(tmp_path_factory.mktemp('preflight') / 'toy', num_train=4, num_val=2)


def copy_of(toy_data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(toy_data, tmp_path / 'data'))


def data_options(root: Path, loaders=LOADERS) -> list[str]:
    return [f'{key}.dataset.data_root={root}' for key in loaders]


def train_error(config: Path, root: Path, tmp_path: Path, capsys, *options: str) -> str:
    """tools/train.py's one error line (exit 2, no work dir made: nothing was built)."""
    work_dir = tmp_path / 'work'
    result = run_tool_in_process('train.py', config, '--work-dir', work_dir, '--cfg-options',
                                 *data_options(root, LOADERS[:2]), *options, capsys=capsys)
    line = single_line_error(result)
    assert result.returncode == 2, result.stderr
    assert not work_dir.exists()
    return line


def label(root: Path, split: str, index: int) -> Path:
    name = 'train' if split == 'training' else 'val'
    return root / 'annotations' / split / f'toy_{name}_{index:05d}.png'


def test_labels_beyond_num_classes(toy_data, tmp_path, capsys):
    root = copy_of(toy_data, tmp_path)
    cv2.imwrite(str(label(root, 'training', 1)), np.full((32, 32), 200, np.uint8))
    line = train_error(TOY_CONFIG, root, tmp_path, capsys)
    assert 'toy_train_00001.png: stored 200' in line
    assert "config's 6 classes" in line and 'reduce_zero_label=True; 199 after it' in line
    assert 'reduce_zero_label? wrong dataset type or num_classes?' in line


def test_image_without_annotation(toy_data, tmp_path, capsys):
    root = copy_of(toy_data, tmp_path)
    label(root, 'training', 2).unlink()
    line = train_error(TOY_CONFIG, root, tmp_path, capsys)
    assert line.startswith(f'error: 1 of 4 images in {root}/images/training have no '
                           f'annotation, e.g. {root}/images/training/toy_train_00002.jpg '
                           f'(expected {label(root, "training", 2)})'), line


def test_label_of_another_size(toy_data, tmp_path, capsys):
    root = copy_of(toy_data, tmp_path)
    cv2.imwrite(str(label(root, 'validation', 0)), np.ones((16, 32), np.uint8))
    line = train_error(TOY_CONFIG, root, tmp_path, capsys)
    assert (f'{root}/images/validation/toy_val_00000.jpg is 32x32 but '
            f'{label(root, "validation", 0)} is 32x16') in line


@pytest.mark.parametrize('content', [b'<html>404 Not Found</html>', b''],
                         ids=['not-an-image', 'empty'])
def test_non_image_file_in_image_folder(toy_data, tmp_path, capsys, content):
    root = copy_of(toy_data, tmp_path)
    (root / 'images' / 'training' / 'toy_train_00003.jpg').write_bytes(content)
    line = train_error(TOY_CONFIG, root, tmp_path, capsys)
    why = 'empty file' if not content else "not an image: starts with b'<html>40'"
    assert line.startswith(f'error: 1 of 8 files are not readable images, e.g. '
                           f'{root}/images/training/toy_train_00003.jpg ({why})'), line


def test_test_tool_checks_its_data_first(toy_data, tmp_path, capsys):
    """tools/test.py: the data problem comes before the checkpoint is even looked at."""
    root = copy_of(toy_data, tmp_path)
    label(root, 'validation', 1).unlink()
    result = run_tool_in_process('test.py', TOY_CONFIG, tmp_path / 'none.pth', '--work-dir',
                                 tmp_path / 'work', '--cfg-options',
                                 f'test_dataloader.dataset.data_root={root}', capsys=capsys)
    line = single_line_error(result)
    assert 'have no annotation, e.g.' in line and 'toy_val_00001.jpg' in line
    assert result.returncode == 2 and not (tmp_path / 'work').exists()


def test_batch_size_zero(toy_data, tmp_path, capsys):
    line = train_error(TOY_CONFIG, toy_data, tmp_path, capsys, 'train_dataloader.batch_size=0')
    assert line == ('error: train_dataloader.batch_size=0: must be a whole number >= 1 '
                    '(images per process), e.g. --cfg-options train_dataloader.batch_size=2')


def test_cityscapes_without_train_ids_names_the_converter(tmp_path, capsys):
    root = tmp_path / 'cityscapes'
    result = run_tool_in_process('make_toy_dataset.py', root, '--layout', 'cityscapes',
                                 '--without-train-ids', capsys=capsys)
    assert result.returncode == 0, result.stderr
    line = train_error(CITYSCAPES, root, tmp_path, capsys)
    import mmseg
    converter = Path(mmseg.__file__).parent / '.mim/tools/dataset_converters/cityscapes.py'
    assert converter.is_file()
    assert line.startswith(f'error: 8 of 8 images in {root}/leftImg8bit/train lack their '
                           '*_gtFine_labelTrainIds.png'), line
    assert (f'pip install cityscapesscripts (mmvolo\'s `cityscapes` extra), then python '
            f'{converter} {root} --nproc 8') in line


def test_full_report_on_good_data(toy_data, capsys):
    result = run_tool_in_process('misc/check_dataset.py', TOY_CONFIG, '--all', '--cfg-options',
                                 *data_options(toy_data), capsys=capsys)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (f"train_dataloader.dataset: ToyShapesDataset, 4 images in "
                        f"{toy_data}/images/training ('*.jpg')")
    assert lines[1] == (f"  annotations: 4 of 4 paired in {toy_data}/annotations/training "
                        "('*.png')")
    assert lines[2] == '  files: 8 checked (present, non-empty, images)'
    assert lines[3].startswith('  label maps read: 4 of 4; values stored: 0-6; after '
                               'reduce_zero_label=True: 0-5, 255; valid: 0-5 (6 classes) and '
                               'ignore 255'), lines[3]
    assert lines[4] == '  sizes: 4 of 4 pairs read agree'
    assert lines[5].startswith('  OK (')
    assert lines[6].startswith('val_dataloader.dataset (also test_dataloader.dataset): ')
    assert lines[-1].startswith('no problems in 2 split(s), 6 images, ')


def test_full_report_lists_every_problem(toy_data, tmp_path, capsys):
    root = copy_of(toy_data, tmp_path)
    cv2.imwrite(str(label(root, 'training', 0)), np.full((32, 32), 9, np.uint8))
    label(root, 'training', 1).unlink()
    cv2.imwrite(str(label(root, 'validation', 0)), np.ones((32, 8), np.uint8))
    result = run_tool_in_process('misc/check_dataset.py', TOY_CONFIG, '--cfg-options',
                                 *data_options(root), capsys=capsys)
    assert result.returncode == 1
    problems = [line for line in result.stdout.splitlines() if line.startswith('  - ')]
    assert len(problems) == 3, result.stdout
    assert 'have no annotation' in problems[0] and 'stored 9' in problems[1]
    assert 'is 32x32 but' in problems[2]
    assert result.stdout.splitlines()[-1].startswith('3 problem(s) in 2 split(s)')


def test_preflight_reads_a_spread_sample(tmp_path):
    root = make_tiny_data(tmp_path / 'toy', num_train=40, num_val=1, size=16)
    cfg = load_config(str(TOY_CONFIG), {'train_dataloader.dataset.data_root': str(root)})
    quick, = check_datasets(cfg, ['train_dataloader'])
    full, = check_datasets(cfg, ['train_dataloader'], sample=None)
    assert (quick.images, quick.files_checked, quick.labels_read) == (40, 80, 16)
    assert (full.labels_read, full.sizes_agree) == (40, 40) and quick.ok and full.ok


def test_pipeline_reduce_zero_label_disagreeing_with_the_dataset(toy_data):
    """mmseg's ADE20K base sets LoadAnnotations(reduce_zero_label=True) (mmseg asserts it
    equal to the dataset's)."""
    cfg = load_config(str(ADE20K), {
        'train_dataloader.dataset.data_root': str(toy_data),
        'train_dataloader.dataset.reduce_zero_label': False})
    report, = check_datasets(cfg, ['train_dataloader'])
    assert report.findings[0].startswith(
        'train_dataloader.dataset.pipeline: LoadAnnotations(reduce_zero_label=True) but the '
        'dataset has reduce_zero_label=False'), report.findings


def test_label_value_mapping_and_formatting():
    assert [effective_value(v, True, None) for v in (0, 1, 150, 255, 256)] == [255, 0, 149,
                                                                               255, -1]
    assert effective_value(3, False, {3: 0}) == 0
    assert format_values({0, 1, 2, 3, 7, 255}) == '0-3, 7, 255'
    assert format_values(range(0, 40, 2)) == '0, 2, 4, 6, 8, 10, ..., 38'


def test_persistent_workers_follow_num_workers(toy_data):
    cfg = load_config(str(CITYSCAPES), {'train_dataloader.num_workers': 0})
    assert cfg.train_dataloader.persistent_workers is True  # mmseg's dataset base
    assert fit_persistent_workers(cfg) == ['train_dataloader.persistent_workers']
    assert cfg.train_dataloader.persistent_workers is False
    assert cfg.val_dataloader.persistent_workers is True  # 4 workers there: kept
    assert dataloader_problems(cfg) == []
    cfg.val_dataloader.num_workers = -1
    assert dataloader_problems(cfg)[0].startswith('val_dataloader.num_workers=-1: ')


def tiny_cityscapes_config(path: Path, base: Path, root: Path) -> Path:
    """A shipped Cityscapes config on the toy Cityscapes set: tiny VOLO, no resizing,
    num_workers=0 (the base keeps persistent_workers=True), 2 iterations."""
    arch = dict(TINY_ARCH)
    path.write_text(f'''
_base_ = [{str(base)!r}]
crop_size = (32, 64)
pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
            dict(type='PackSegInputs')]
model = dict(data_preprocessor=dict(size=crop_size),
             backbone=dict(arch=dict(_delete_=True, **{arch!r}), img_size=crop_size,
                           drop_path_rate=0.0, init_cfg=None),
             decode_head=dict(in_channels=[16, 16, 32, 32], channels=16),
             auxiliary_head=dict(in_channels=32, channels=8),
             test_cfg=dict(mode='whole'))
train_dataloader = dict(num_workers=0, dataset=dict(data_root={str(root)!r}, pipeline=pipeline))
val_dataloader = dict(num_workers=0, dataset=dict(data_root={str(root)!r}, pipeline=pipeline))
test_dataloader = val_dataloader
param_scheduler = [dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=2)]
train_cfg = dict(max_iters=2, val_interval=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2, save_best=None))
randomness = dict(seed=0)
''')
    return path


@pytest.mark.slow(seconds=18)
@pytest.mark.parametrize('name', ['volo-d1_upernet_8xb2-80k_cityscapes-512x1024.py',
                                    'volo-d1_upernet_8xb1-80k_cityscapes-1024x1024.py'],
                         ids=['8xb2', '8xb1-one-image-per-process'])
def test_trains_a_cityscapes_config_on_the_toy_cityscapes_set(tmp_path, name):
    """2 iterations + validation through tools/train.py (a fresh process), num_workers=0;
    the 8xb1 config trains with one image in one process (its BN guard announced)."""
    root = generate_toy_cityscapes(tmp_path / 'cityscapes',
                                   ToyCityscapesSpec(num_train=4, num_val=2))
    config = tiny_cityscapes_config(tmp_path / 'cfg.py', REPO / 'configs/volo' / name, root)
    result = run_tool('train.py', config, '--work-dir', tmp_path / 'work', cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert (tmp_path / 'work' / 'iter_2.pth').is_file()
    assert 'Iter(val) [2/2]' in output and 'mIoU' in output
    assert ('[mmvolo] batch 1 per process' in output) == ('8xb1' in name)


def test_toy_cityscapes_layout(tmp_path, capsys):
    root = tmp_path / 'cs'
    result = run_tool_in_process('make_toy_dataset.py', root, '--layout', 'cityscapes',
                                 '--num-train', 2, '--num-val', 1, '--size', 16, capsys=capsys)
    assert result.returncode == 0 and '16x32, Cityscapes layout' in result.stdout
    stem = root / 'gtFine' / 'train' / 'aachen' / 'aachen_000000_000000'
    image = cv2.imread(str(root / 'leftImg8bit/train/aachen/aachen_000000_000000_leftImg8bit.png'))
    train_ids = cv2.imread(f'{stem}_gtFine_labelTrainIds.png', cv2.IMREAD_UNCHANGED)
    label_ids = cv2.imread(f'{stem}_gtFine_labelIds.png', cv2.IMREAD_UNCHANGED)
    assert image.shape == (16, 32, 3) and train_ids.shape == label_ids.shape == (16, 32)
    assert set(np.unique(train_ids)) <= set(range(19)) | {255}
    lookup = np.array(list(TRAIN_ID_TO_LABEL_ID) + [0] * (256 - 19), np.uint8)
    assert np.array_equal(lookup[train_ids], label_ids)
    assert (root / 'leftImg8bit/train/bremen/bremen_000000_000001_leftImg8bit.png').is_file()
    assert Path(f'{stem}_gtFine_polygons.json').is_file()
    bare = tmp_path / 'bare'
    generate_toy_cityscapes(bare, ToyCityscapesSpec(num_train=1, num_val=1, with_train_ids=False))
    assert not list(bare.rglob('*_labelTrainIds.png')) and list(bare.rglob('*_labelIds.png'))


def upernet_head():
    from mmseg.models.decode_heads import UPerHead

    return UPerHead(in_channels=[8, 8, 8, 8], in_index=[0, 1, 2, 3], channels=8, num_classes=3,
                    pool_scales=(1, 2), dropout_ratio=0.0,
                    norm_cfg=dict(type='BN', requires_grad=True)).train()


def test_batch_of_one_through_the_pooled_branch():
    """UPerHead's AdaptiveAvgPool(1) -> ConvModule(BN) fails on one image; guarded, it
    trains (running statistics kept as they were) and batch 2 is bit-identical."""
    import torch

    head, guarded = upernet_head(), upernet_head()
    guarded.load_state_dict(head.state_dict())
    assert guard_single_value_batchnorm(guarded) == len(
        [m for m in guarded.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    one = [torch.randn(1, 8, 8 // 2 ** i, 8 // 2 ** i) for i in range(4)]
    with pytest.raises(ValueError, match='Expected more than 1 value per channel'):
        head(one)
    pooled_bn = guarded.psp_modules[0][1].bn
    before = pooled_bn.running_mean.clone()
    guarded(one).sum().backward()
    assert torch.equal(pooled_bn.running_mean, before) and pooled_bn.training
    assert guarded.psp_modules[0][1].conv.weight.grad.abs().sum() > 0
    two = [torch.randn(2, 8, 8 // 2 ** i, 8 // 2 ** i) for i in range(4)]
    assert torch.equal(head(two), guarded(two))
    assert torch.equal(head.psp_modules[0][1].bn.running_var, pooled_bn.running_var)


def test_a_pipeline_without_labels_needs_none(toy_data, tmp_path):
    """Inference-only test sets (no LoadAnnotations, TestTimeAug's nesting searched)."""
    root = copy_of(toy_data, tmp_path)
    for path in (root / 'annotations' / 'validation').iterdir():
        path.unlink()
    cfg = load_config(str(TOY_CONFIG), {'test_dataloader.dataset.data_root': str(root)})
    report, = check_datasets(cfg, ['test_dataloader'])
    assert not report.ok and 'have no annotation' in report.findings[0]
    cfg.test_dataloader.dataset.pipeline = [dict(type='LoadImageFromFile'),
                                            dict(type='PackSegInputs')]
    report, = check_datasets(cfg, ['test_dataloader'])
    assert report.ok and (report.images, report.paired, report.files_checked) == (2, 0, 2)
    cfg.test_dataloader.dataset.pipeline = [dict(type='LoadImageFromFile'), dict(
        type='TestTimeAug', transforms=[[dict(type='LoadAnnotations')]])]
    report, = check_datasets(cfg, ['test_dataloader'])
    assert not report.ok
