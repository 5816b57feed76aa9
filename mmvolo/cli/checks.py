"""Checks of a tool's input that turn common mistakes into one line naming the fix.

Every check raises :class:`UsageError`; the tools print its message (no traceback) and exit
with its ``exit_code`` (2: wrong arguments or files, 1: unusable checkpoint).
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from mmengine.config import Config

# One UsageError for every tool, torch-side and torch-free: mmvolo_runtime's (stdlib only), so
# a helper shared with the runtime (mmvolo_runtime.inputs) raises what run_tool catches.
from mmvolo_runtime.errors import UsageError

from ..checkpoint import (
    CheckpointError,
    UntrustedCheckpointError,
    load_checkpoint_file,
)
from ..datasets.preflight import check_datasets, leaf_datasets
from ..download import is_url
from ..models.arch_zoo import resolve_arch
from ..models.volo import VOLO_ARG_CHECKS, validate_volo_arg
from ..models.weights import describe_state_dict, extract_state_dict, is_volo_state_dict
from ..utils.config import ConfigError, build_model_for_analysis, load_config_file

#: Top-level keys each kind of run needs.
REQUIRED_KEYS = {
    'train': ('model', 'train_dataloader', 'train_cfg', 'optim_wrapper'),
    'test': ('model', 'test_dataloader', 'test_evaluator', 'test_cfg'),
    'infer': ('model',),
}
#: How to get each dataset, for the missing-data message (``{root}``: the data root).
DATA_HINTS = {
    'ADE20KDataset': 'download ADE20K there',
    'ToyShapesDataset': 'generate it with `python tools/make_toy_dataset.py {root}`',
    'CityscapesDataset': 'unpack leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip '
                         'there (docs/datasets.md)',
}
EXAMPLE_CONFIG = 'configs/volo/volo-toy_upernet_1xb2-800iter_toy-64x64.py'




def load_config(path: str, cfg_options: dict | None = None) -> Config:
    """Read a config file and merge ``--cfg-options``; unreadable input is a UsageError."""
    try:
        return load_config_file(path, cfg_options)
    except ConfigError as error:
        raise UsageError(str(error)) from None


def check_seg_config(cfg: Config, path: str, mode: str) -> None:
    """Require an mmseg segmentation config with what a ``mode`` run needs.

    Args:
        mode: 'train', 'test' or 'infer'.
    """
    model = cfg.get('model')
    if not isinstance(model, dict):
        raise UsageError(f'{path} defines no `model`: it is not a model config; pass a '
                         f'segmentation config such as {EXAMPLE_CONFIG}')
    scope = cfg.get('default_scope', 'mmseg')
    model_type = model.get('type')
    if scope != 'mmseg' or not _is_segmentor(model_type):
        raise UsageError(
            f"{path} builds a '{_type_name(model_type)}' (default_scope '{scope}'), not an mmseg "
            'segmentor: these tools do semantic segmentation; run classification configs with '
            "mmpretrain's tools")
    missing = [key for key in REQUIRED_KEYS[mode] if cfg.get(key) is None]
    if missing:
        raise UsageError(f'{path} lacks {", ".join(missing)}: it is not a {mode} config for '
                         f'mmseg; pass a segmentation config such as {EXAMPLE_CONFIG}')


def _is_segmentor(model_type: Any) -> bool:
    import mmseg.models  # noqa: F401 - registers the segmentors
    from mmseg.models.segmentors import BaseSegmentor
    from mmseg.registry import MODELS

    cls = model_type if isinstance(model_type, type) else None
    if isinstance(model_type, str):
        cls = MODELS.get(model_type)
    if callable(getattr(cls, 'segmentor_class', None)):  # mmvolo's lazy builders
        cls = cls.segmentor_class()
    return cls is not None and issubclass(cls, BaseSegmentor)


def _type_name(model_type: Any) -> str:
    return getattr(model_type, '__name__', str(model_type))


def check_arch(cfg: Config) -> None:
    """Validate the ``arch`` and the other checked arguments (:data:`VOLO_ARG_CHECKS`) of
    every VOLO backbone in the model, with the backbone's own rules, without building it."""
    for where, node in _walk_dicts(cfg.get('model'), 'model'):
        if _type_name(node.get('type')).split('.')[-1] != 'VOLO':
            continue
        try:
            resolve_arch(node.get('arch', 'd1'))
        except (ValueError, TypeError) as error:
            raise UsageError(f'{where}.arch: {error}') from None
        _check_volo_args(node, where)


def _check_volo_args(node: dict, where: str) -> None:
    """One line naming the config key, e.g. ``model.backbone.out_indices=[0, 7]: ...``."""
    for name in VOLO_ARG_CHECKS:
        if name not in node:
            continue
        try:
            validate_volo_arg(name, node[name])
        except (ValueError, TypeError) as error:
            raise UsageError(f'{where}.{error}') from None


def check_data_roots(cfg: Config, dataloaders: Sequence[str]) -> None:
    """Require each dataset's ``data_root`` (and its image folder) to exist."""
    for key in dataloaders:
        loader = cfg.get(key)
        if not isinstance(loader, dict) or not isinstance(loader.get('dataset'), dict):
            continue
        for where, dataset in leaf_datasets(loader['dataset'], f'{key}.dataset'):
            _check_one_root(dataset, where)


def check_data_files(cfg: Config, dataloaders: Sequence[str], config_path: str) -> None:
    """Dataloader settings and the data files themselves, before any model is built
    (:mod:`mmvolo.datasets.loader_settings`, :mod:`mmvolo.datasets.preflight`: every file's
    presence and pairing, a sample of label maps read); the first problem as one line."""
    from ..datasets.loader_settings import dataloader_problems

    problems = dataloader_problems(cfg, dataloaders)
    if problems:
        raise UsageError(problems[0])
    findings = [line for report in check_datasets(cfg, dataloaders) for line in report.findings]
    if findings:
        more = f' ({len(findings) - 1} more problem(s))' if len(findings) > 1 else ''
        raise UsageError(f'{findings[0]}{more}; full report: python tools/misc/check_dataset.py '
                         f'{config_path}')


def _check_one_root(dataset: dict, where: str) -> None:
    root = dataset.get('data_root')
    if not root:
        return
    hint = DATA_HINTS.get(_type_name(dataset.get('type')), 'put the dataset there').format(
        root=root)
    fix = f'{hint} or set --cfg-options {where}.data_root=...'
    if not os.path.isdir(root):
        raise UsageError(f'data root {root} not found: {fix}')
    images = (dataset.get('data_prefix') or {}).get('img_path')
    if images and not os.path.isdir(os.path.join(root, images)):
        raise UsageError(f'data root {root} has no {images}: {fix}')


def _walk_dicts(node: Any, where: str) -> Iterator[tuple[str, dict]]:
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from _walk_dicts(value, f'{where}.{key}')
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _walk_dicts(value, f'{where}.{index}')


def check_checkpoint(path: str, cfg: Config, trust: bool = False) -> None:
    """Require ``path`` to hold weights of the model ``cfg`` builds (same keys and shapes).

    The file is read by :func:`mmvolo.checkpoint.load_checkpoint_file` (no pickled code runs
    unless ``trust``).

    ``path`` may be an ``http(s)://`` URL: it is downloaded once into torch.hub's cache
    (:mod:`mmvolo.download`) and checked the same way.

    Raises:
        UsageError: exit code 2 if the file is missing, 1 if it holds something else or the
            URL cannot be fetched (the message says what it looks like).
    """
    if not is_url(path) and not os.path.isfile(path):
        raise UsageError(f'checkpoint {path} not found')
    checkpoint = read_checkpoint_for_tool(path, trust)
    state_dict = model_state_dict(checkpoint)
    if not any(key.startswith('decode_head.') for key in state_dict):
        flat, _ = extract_state_dict(checkpoint)
        raise UsageError(_not_a_segmentor(path, flat), exit_code=1)
    _compare(path, state_dict, expected_shapes(cfg))


def model_state_dict(checkpoint: Any) -> dict:
    """The tensors of a Runner checkpoint (or a bare state dict), keys as saved."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get('state_dict'), dict):
        checkpoint = checkpoint['state_dict']
    if not isinstance(checkpoint, dict):
        return {}
    return {key.removeprefix('module.'): value for key, value in checkpoint.items()
            if hasattr(value, 'shape')}


def _not_a_segmentor(path: str, state_dict: dict) -> str:
    if is_volo_state_dict(state_dict):
        return (f'checkpoint {path} holds VOLO backbone weights only (no decode head): use it '
                'as model.backbone.init_cfg=dict(type="Pretrained", checkpoint=...) to train, '
                'then test the trained checkpoint')
    return f'checkpoint {path} is not an mmseg segmentor ({describe_state_dict(state_dict)})'


def expected_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of the model ``cfg`` builds (built on CPU, nothing loaded)."""
    model = build_model_for_analysis(cfg.copy(), outlook_impl=None)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _compare(path: str, state_dict: dict, expected: dict[str, tuple[int, ...]]) -> None:
    backbone = {key[len('backbone.'):]: value for key, value in state_dict.items()
                if key.startswith('backbone.')}
    expects_volo = 'backbone.patch_embed.proj.weight' in expected
    if expects_volo and not is_volo_state_dict(backbone):
        raise UsageError(f'checkpoint {path} is not a VOLO segmentor (its backbone: '
                         f'{describe_state_dict(backbone)})', exit_code=1)
    missing = [key for key in expected if key not in state_dict
               and not key.endswith('num_batches_tracked')]
    wrong = [key for key in expected if key in state_dict
             and tuple(state_dict[key].shape) != expected[key]]
    if wrong:
        key = wrong[0]
        raise UsageError(
            f'checkpoint {path} does not fit this config: {len(wrong)} tensors differ in shape, '
            f'e.g. {key} {tuple(state_dict[key].shape)} vs {expected[key]} (trained with '
            'another arch or num_classes?)', exit_code=1)
    if missing:
        raise UsageError(f'checkpoint {path} lacks {len(missing)} of the model\'s tensors, e.g. '
                         f'{missing[0]} ({describe_state_dict(state_dict)})', exit_code=1)


def read_checkpoint_for_tool(path: str, trust: bool = False, what: str = '') -> Any:
    """:func:`mmvolo.checkpoint.load_checkpoint_file`, its errors worded for the tools.

    Raises:
        UsageError: exit code 1, one line (``what``, e.g. 'load_from', prefixes it).
    """
    prefix = f'{what}: ' if what else ''
    try:
        return load_checkpoint_file(path, trust=trust)
    except UntrustedCheckpointError as error:
        raise UsageError(prefix + str(untrusted_usage_error(error)), exit_code=1) from None
    except CheckpointError as error:
        raise UsageError(f'{prefix}{error}', exit_code=1) from None


def untrusted_usage_error(error: UntrustedCheckpointError) -> UsageError:
    """The tools' wording of a refused pickle: the opt-in is the ``--trust`` flag."""
    return UsageError(f'{error.path} needs pickled code to load ({error.needs}); refusing to '
                      'run it. Re-run with --trust only if you trust its source', exit_code=1)
