"""Reading VOLO checkpoints and mapping their keys onto mmvolo's backbone.

One mapping serves the backbone's ``init_cfg=dict(type='Pretrained')`` and the converter
(``tools/model_converters/volo2mmseg.py``). mmvolo keeps the official parameter names
(``patch_embed.*``, ``pos_embed``, ``network.{0..4}.*``), so official sail-sg/volo files, timm
``volo_*`` files and converted files all map the same way: unwrap, strip prefixes, drop the
classification-only parts (``cls_token``, ``post_network``, ``aux_head``, ``norm``, ``head``)
unless they are asked for.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from mmengine.logging import print_log

from ..checkpoint import CheckpointError, load_checkpoint_file
from .arch_zoo import match_arch
from .embed import POS_EMBED_STRIDE

#: Wrappers seen in the wild, tried in this order (``state_dict_ema`` first with ``ema=True``).
WRAPPER_KEYS = ('state_dict', 'state_dict_ema', 'model', 'model_ema', 'module')
#: Wrappers that hold EMA weights (the ones ``ema=True`` asks for).
EMA_WRAPPER_KEYS = ('state_dict_ema', 'model_ema')
#: Prefixes stripped from keys: DataParallel/DDP, and segmentors/classifiers (backbone.*).
STRIPPED_PREFIXES = ('module.', 'backbone.')
#: Classification-only parameters of VOLO (kept only with ``keep_head=True``).
HEAD_KEY_PATTERN = re.compile(r'^(cls_token|post_network\.|aux_head\.|norm\.|head\.)')
#: Prefixes of an mmpretrain classifier's parts (``ImageClassifier.backbone`` / ``.head``).
CLASSIFIER_BACKBONE_PREFIX = 'backbone.'
CLASSIFIER_HEAD_PREFIX = 'head.'
#: Attention logits per head of VOLO's outlookers: K^2 x K^2 with the official K = 3.
OUTLOOK_LOGITS_PER_HEAD = 3 ** 4
#: Keys that identify a VOLO state dict.
SIGNATURE_KEYS = ('patch_embed.proj.weight', 'network.0.0.attn.attn.weight')


class NoEmaWeightsError(CheckpointError):
    """EMA weights were asked for, but the checkpoint holds none."""


@dataclass
class ConversionReport:
    """What :func:`convert_state_dict` did to each key."""
    kept: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    def num_params(self, state_dict: dict[str, torch.Tensor]) -> int:
        return sum(tensor.numel() for tensor in state_dict.values())


# ------------------------------------------------------------------------------------------
# Unwrapping and recognising
# ------------------------------------------------------------------------------------------
def extract_state_dict(obj: Any, ema: bool = False) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Flat ``{name: tensor}`` from a checkpoint object, with the prefixes stripped.

    Args:
        obj: what :func:`mmvolo.checkpoint.load_checkpoint_file` returned.
        ema: take the EMA weights (``state_dict_ema`` / ``model_ema``).

    Returns:
        (state_dict, notes): notes say which wrapper and prefixes were removed.

    Raises:
        NoEmaWeightsError: ``ema=True`` and the checkpoint holds no EMA wrapper.
        CheckpointError: the checkpoint holds no state dict.
    """
    notes: list[str] = []
    order = EMA_WRAPPER_KEYS + WRAPPER_KEYS if ema else WRAPPER_KEYS
    found_ema = False
    while isinstance(obj, dict) and not _is_tensor_dict(obj):
        wrapper = next((key for key in order if isinstance(obj.get(key), dict)), None)
        if wrapper is None:
            break
        notes.append(f"unwrapped '{wrapper}'")
        found_ema = found_ema or wrapper in EMA_WRAPPER_KEYS
        obj = obj[wrapper]
    if ema and not found_ema:
        raise NoEmaWeightsError('checkpoint has no EMA weights (no '
                                f"{' or '.join(EMA_WRAPPER_KEYS)} entry); use its plain weights")
    if not isinstance(obj, dict):
        raise CheckpointError(f'checkpoint holds a {type(obj).__name__}, not a state dict')
    state_dict = {key: value for key, value in obj.items() if isinstance(value, torch.Tensor)}
    for prefix in STRIPPED_PREFIXES:
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
            notes.append(f"stripped '{prefix}'")
        elif prefix == 'backbone.' and any(key.startswith(prefix) for key in state_dict):
            # a whole segmentor/classifier: keep its backbone, and the VOLO head of an
            # mmvolo classifier (``head.<official head key>``) under its official name
            state_dict, kept_head = _split_full_model(state_dict)
            notes.append("kept 'backbone.*'" + (" and 'head.*'" if kept_head else '')
                         + ' of a full model')
    return state_dict, notes


def _split_full_model(state_dict: dict[str, torch.Tensor]
                      ) -> tuple[dict[str, torch.Tensor], bool]:
    """Official keys of a full model's ``backbone.*`` and VOLO ``head.*`` tensors."""
    flat: dict[str, torch.Tensor] = {}
    kept_head = False
    for key, value in state_dict.items():
        if key.startswith('backbone.'):
            flat[key[len('backbone.'):]] = value
        elif key.startswith(CLASSIFIER_HEAD_PREFIX) and HEAD_KEY_PATTERN.match(
                key[len(CLASSIFIER_HEAD_PREFIX):]):
            flat[key[len(CLASSIFIER_HEAD_PREFIX):]] = value
            kept_head = True
    return flat, kept_head


def _is_tensor_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(value, torch.Tensor) for value in obj.values())


def is_volo_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(key in state_dict for key in SIGNATURE_KEYS)


_LOOKALIKES = (
    ('layers.0.blocks.0.attn.relative_position_bias_table', 'a Swin Transformer'),
    ('stages.0.blocks.0.attn.relative_position_bias_table', 'a Swin Transformer'),
    ('blocks.0.attn.qkv.weight', 'a ViT/DeiT-style transformer'),
    ('layers.0.0.attn.qkv.weight', 'a ViT-style transformer'),
    ('layer1.0.conv1.weight', 'a ResNet'),
    ('stages.0.0.depthwise_conv.weight', 'a ConvNeXt'),
    ('decode_head.conv_seg.weight', 'an mmseg segmentor'),
)


def describe_state_dict(state_dict: dict[str, torch.Tensor]) -> str:
    """A short guess at what a non-VOLO state dict is, for error messages."""
    if not state_dict:
        return 'no tensors at all'
    guess = next((name for key, name in _LOOKALIKES if key in state_dict), None)
    sample = ', '.join(list(state_dict)[:3])
    what = f'looks like {guess}' if guess else 'unrecognised layout'
    return f'{what}; {len(state_dict)} tensors, first keys: {sample}'


def require_volo(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming what ``source`` holds if it is not VOLO weights."""
    if not is_volo_state_dict(state_dict):
        raise CheckpointError(
            f'{source} is not a VOLO checkpoint ({describe_state_dict(state_dict)})')


# ------------------------------------------------------------------------------------------
# Architecture detection
# ------------------------------------------------------------------------------------------
def infer_settings(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture settings readable from VOLO weights (heads of stages 1-3 excepted).

    Returns:
        dict with layers, embed_dims, num_heads (stage 0 only; later ones None), mlp_ratio,
        stem_hidden_dims and img_size (pretraining resolution = 16 x pos_embed grid, or None).
    """
    groups = _block_groups(state_dict)
    if len(groups) != 4:
        raise CheckpointError(f'VOLO weights with {len(groups)} block groups '
                              f'(network indices {sorted(groups)}); expected 4')
    layers = tuple(groups[index] for index in sorted(groups))
    embed_dims = tuple(state_dict[f'network.{index}.0.norm1.weight'].shape[0]
                       for index in sorted(groups))
    outlook_logits = state_dict['network.0.0.attn.attn.weight'].shape[0]
    hidden = state_dict['network.0.0.mlp.fc1.weight'].shape[0]
    pos_embed = state_dict.get('pos_embed')
    img_size = None
    if pos_embed is not None:
        img_size = (int(pos_embed.shape[1]) * POS_EMBED_STRIDE,
                    int(pos_embed.shape[2]) * POS_EMBED_STRIDE)
    return dict(layers=layers, embed_dims=embed_dims,
                num_heads=(outlook_logits // OUTLOOK_LOGITS_PER_HEAD, None, None, None),
                mlp_ratio=hidden / embed_dims[0],
                stem_hidden_dims=int(state_dict['patch_embed.proj.weight'].shape[1]),
                img_size=img_size)


def _block_groups(state_dict: dict[str, torch.Tensor]) -> dict[int, int]:
    """{network index: number of blocks} for the block groups (the downsample has none)."""
    counts: dict[int, int] = {}
    for key in state_dict:
        found = re.match(r'^network\.(\d+)\.(\d+)\.', key)
        if found:
            group, block = int(found.group(1)), int(found.group(2))
            counts[group] = max(counts.get(group, 0), block + 1)
    return counts


def detect_arch(state_dict: dict[str, torch.Tensor]) -> tuple[str, tuple[int, int] | None]:
    """(variant name 'd1'..'d5', pretraining (H, W)) of VOLO weights.

    Raises:
        CheckpointError: the weights match no official variant (say what they look like).
    """
    settings = infer_settings(state_dict)
    name = match_arch(settings)
    if name is None:
        raise CheckpointError(
            'VOLO weights match no official variant (layers {layers}, embed_dims {embed_dims}, '
            'stem {stem_hidden_dims}, mlp_ratio {mlp_ratio:g}); pass the arch as a dict'.format(
                **settings))
    return name, settings['img_size']


# ------------------------------------------------------------------------------------------
# Mapping
# ------------------------------------------------------------------------------------------
def classifier_key(key: str) -> str:
    """Name of an official VOLO key in mmpretrain's ``ImageClassifier`` with
    ``VOLOClsHead``: ``head.<key>`` for classification-only keys, else ``backbone.<key>``."""
    if HEAD_KEY_PATTERN.match(key):
        return CLASSIFIER_HEAD_PREFIX + key
    return CLASSIFIER_BACKBONE_PREFIX + key


def convert_state_dict(state_dict: dict[str, torch.Tensor], keep_head: bool = False,
                       pos_embed_size: tuple[int, int] | None = None,
                       classifier_layout: bool = False
                       ) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map VOLO weights onto mmvolo's names, drop the head unless asked, resize pos_embed.

    Args:
        state_dict: flat VOLO state dict (see :func:`extract_state_dict`).
        keep_head: keep ``cls_token``, ``post_network``, ``aux_head``, ``norm``, ``head``.
        pos_embed_size: target token grid (H/16, W/16) for ``pos_embed``; None keeps it.
        classifier_layout: name keys as in mmvolo's mmpretrain classifier
            (:func:`classifier_key`: ``backbone.*``, ``head.*``). Default: False (the
            backbone's own, official names).

    Returns:
        (converted state dict, report).
    """
    from .embed import resize_pos_embed

    report = ConversionReport()
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not keep_head and HEAD_KEY_PATTERN.match(key):
            report.dropped.append(key)
            continue
        new_key = classifier_key(key) if classifier_layout else key  # official names kept
        if new_key != key:
            report.renamed[key] = new_key
        else:
            report.kept.append(key)
        converted[new_key] = value
    pos_key = classifier_key('pos_embed') if classifier_layout else 'pos_embed'
    if pos_embed_size is not None and pos_key in converted:
        old = converted[pos_key]
        converted[pos_key] = resize_pos_embed(old, tuple(pos_embed_size))
        if converted[pos_key].shape != old.shape:
            report.resized['pos_embed'] = (tuple(old.shape), tuple(converted[pos_key].shape))
    return converted, report


def read_volo_state_dict(path: str | os.PathLike, ema: bool = False, trust: bool = False
                         ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Flat, official-named VOLO weights of a checkpoint file (or its ``http(s)://`` URL,
    downloaded once into torch.hub's cache), and the unwrapping notes.

    Raises:
        CheckpointError: missing/corrupt/untrusted file, no EMA weights when ``ema``, or not
            VOLO weights (one line naming the file).
    """
    checkpoint = load_checkpoint_file(path, trust=trust)
    try:
        state_dict, notes = extract_state_dict(checkpoint, ema=ema)
    except NoEmaWeightsError as error:
        raise NoEmaWeightsError(f'{os.fspath(path)}: {error}') from None
    require_volo(state_dict, os.fspath(path))
    return state_dict, notes


def load_volo_weights(path: str | os.PathLike, keep_head: bool = False, ema: bool = False,
                      trust: bool = False, pos_embed_size: tuple[int, int] | None = None
                      ) -> tuple[dict[str, torch.Tensor], ConversionReport, list[str]]:
    """Read, unwrap, check and convert a VOLO checkpoint file in one call.

    Returns:
        (state dict ready for the backbone, report, unwrap notes).
    """
    state_dict, notes = read_volo_state_dict(path, ema, trust)
    converted, report = convert_state_dict(state_dict, keep_head, pos_embed_size)
    return converted, report, notes


def log_load_summary(owner: str, loaded: int, checkpoint: str, notes: list[str],
                     details: list[str], unexpected: list[str], warn: bool = False) -> None:
    """The one log record of a weights load: ``OWNER: loaded N tensors from FILE (notes)``,
    then one indented line per detail and the checkpoint's unexpected keys; WARNING level
    when ``warn`` (something stays at init that the user asked to allow)."""
    lines = [f'{owner}: loaded {loaded} tensors from {checkpoint}'
             + (f" ({', '.join(notes)})" if notes else '')]
    lines += [f'  {detail}' for detail in details]
    if unexpected:
        lines.append(f'  unexpected in checkpoint: {unexpected}')
    print_log('\n'.join(lines), logger='current',
              level=logging.WARNING if warn else logging.INFO)
