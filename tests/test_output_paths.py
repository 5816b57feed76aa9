"""An output folder that is, or lies inside, a data folder of the config is refused before
anything is written (tools/test.py --out/--show-dir/--work-dir, tools/train.py --work-dir)."""
from __future__ import annotations

import os

import pytest
from mmengine.config import Config

from mmvolo.cli import UsageError
from mmvolo.cli.output_paths import check_output_folders, data_folders


def ade_like(root) -> Config:
    dataset = dict(type='ADE20KDataset', data_root=str(root),
                   data_prefix=dict(img_path='images/validation',
                                    seg_map_path='annotations/validation'))
    train = dict(dataset, data_prefix=dict(img_path='images/training',
                                           seg_map_path='annotations/training'))
    return Config(dict(train_dataloader=dict(dataset=dict(type='RepeatDataset', times=2,
                                                          dataset=train)),
                       val_dataloader=dict(dataset=dataset), test_dataloader=dict(dataset=dataset)))


def test_every_dataloaders_folders_are_listed(tmp_path):
    folders = dict(data_folders(ade_like(tmp_path)))
    assert folders['train_dataloader.dataset.dataset.data_prefix.seg_map_path'] == \
        os.path.join(str(tmp_path), 'annotations/training')
    assert folders['test_dataloader.dataset.data_root'] == str(tmp_path)


@pytest.mark.parametrize('out, how, where', [
    ('annotations/validation', 'is', 'val_dataloader.dataset.data_prefix.seg_map_path'),
    ('annotations/validation/preds', 'lies inside',
     'val_dataloader.dataset.data_prefix.seg_map_path'),
    ('images/training', 'is', 'train_dataloader.dataset.dataset.data_prefix.img_path'),
    ('.', 'is', 'train_dataloader.dataset.dataset.data_root'),
])
def test_a_folder_in_the_data_is_refused_in_one_line(tmp_path, out, how, where):
    (tmp_path / 'annotations' / 'validation').mkdir(parents=True)
    with pytest.raises(UsageError) as error:
        check_output_folders(ade_like(tmp_path), {'--out': str(tmp_path / out)})
    message = str(error.value)
    assert message.startswith(f'--out {tmp_path / out} {how} the data folder ')
    assert f'({where})' in message and '\n' not in message


def test_a_symlink_into_the_data_is_refused(tmp_path):
    (tmp_path / 'data' / 'annotations' / 'validation').mkdir(parents=True)
    (tmp_path / 'link').symlink_to(tmp_path / 'data' / 'annotations')
    with pytest.raises(UsageError, match='is the data folder'):
        check_output_folders(ade_like(tmp_path / 'data'),
                             {'--show-dir': str(tmp_path / 'link' / 'validation')})


def test_folders_beside_or_above_the_data_are_allowed(tmp_path):
    cfg = ade_like(tmp_path / 'work_dirs' / 'toy_data')
    check_output_folders(cfg, {'--work-dir': str(tmp_path / 'work_dirs'),  # contains the data
                               '--out': str(tmp_path / 'work_dirs' / 'preds'), '--show-dir': None})
