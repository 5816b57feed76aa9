"""Output folders that would write into the data: refused before anything is written.

``tools/test.py CONFIG CKPT --out data/ade/.../annotations/validation`` would overwrite the
ground-truth label maps with predictions (same file names) and exit 0; a folder inside an
image or annotation folder adds files that mmseg's datasets, which list those folders
recursively, read as data from then on. :func:`check_output_folders` refuses an output folder
that *is* or *lies inside* any data folder of the config: every dataloader's dataset
``data_root`` and its ``data_prefix`` folders (``img_path``, ``seg_map_path``). A folder that
merely *contains* a data folder (``work_dirs/`` holding ``work_dirs/toy_data``) is allowed:
the tools write their own names at its top level or in new sub-folders, never into the data.
"""
from __future__ import annotations

import os.path as osp
from collections.abc import Iterator, Mapping

from mmengine.config import Config

from ..datasets.preflight import leaf_datasets
from .checks import UsageError

#: The dataloaders whose datasets hold data folders.
DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def data_folders(cfg: Config) -> Iterator[tuple[str, str]]:
    """``(config key, folder)`` for each data folder of the config's datasets (as written;
    relative folders are relative to the working directory, as mmseg reads them)."""
    for key in DATALOADERS:
        loader = cfg.get(key)
        if not isinstance(loader, Mapping) or not isinstance(loader.get('dataset'), Mapping):
            continue
        for where, dataset in leaf_datasets(loader['dataset'], f'{key}.dataset'):
            root = dataset.get('data_root') or ''
            if root:
                yield f'{where}.data_root', root
            for name, prefix in (dataset.get('data_prefix') or {}).items():
                if isinstance(prefix, str) and prefix:
                    yield f'{where}.data_prefix.{name}', osp.join(root, prefix)


def _inside(path: str, folder: str) -> bool:
    return osp.commonpath([path, folder]) == folder


def check_output_folders(cfg: Config, outputs: Mapping[str, str | None]) -> None:
    """Refuse any output folder (``{option: path}``, None skipped) that is, or lies
    inside, a data folder of ``cfg`` (symlinks resolved); call it before writing anything.

    Raises:
        UsageError: one line naming the option, the data folder and its config key.
    """
    folders = sorted(((where, osp.realpath(folder)) for where, folder in data_folders(cfg)),
                     key=lambda item: -len(item[1]))  # the innermost match is named
    for option, path in outputs.items():
        if not path:
            continue
        real = osp.realpath(path)
        for where, folder in folders:
            if _inside(real, folder):
                how = 'is' if real == folder else 'lies inside'
                raise UsageError(f'{option} {path} {how} the data folder {folder} ({where}): '
                                 'writing there would overwrite or add to the dataset; choose '
                                 'a folder outside the data')
