"""VOLO backbone for dense prediction (mmseg) and classification (mmpretrain)."""
from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from torch.nn.modules.batchnorm import _BatchNorm

from ..registry import MODELS
from ..utils.validation import check_arg, check_args, is_int, rate
from .arch_zoo import resolve_arch
from .blocks import DEFAULT_NORM_CFG, Outlooker, VOLOTransformerBlock
from .embed import POS_EMBED_STRIDE, Downsample, PatchEmbed, resize_pos_embed
from .mixer_builder import DEFAULT_TOKEN_MIXER, mixer_type
from .weights import (
    CheckpointError,
    describe_state_dict,
    detect_arch,
    load_volo_weights,
    log_load_summary,
)

#: ``network`` index of each block group: the outlookers, then three transformer groups
#: (``network.1`` is the downsample between them).
GROUP_NETWORK_INDEX = (0, 2, 3, 4)
#: Stride of each block group's output (raw mode).
GROUP_STRIDES = (8, 16, 16, 16)
#: ``network`` index before which ``pos_embed`` is added: the first transformer group, right
#: after the downsample to stride 16 (as in the official code).
POS_EMBED_NETWORK_INDEX = GROUP_NETWORK_INDEX[1]


@dataclass(frozen=True)
class PyramidLevel:
    """How one pyramid output is made: the block group it taps (through its own LayerNorm),
    how that map is resampled, and the resulting stride."""
    group: int
    resample: str  # 'upsample2x' (2x2 stride-2 transposed conv), 'maxpool2x' or 'none'
    stride: int


#: The pyramid, level by level (strides 4, 8, 16, 32 for UperNet-style heads).
PYRAMID = (
    PyramidLevel(group=0, resample='upsample2x', stride=4),
    PyramidLevel(group=0, resample='none', stride=8),
    PyramidLevel(group=2, resample='none', stride=16),
    PyramidLevel(group=3, resample='maxpool2x', stride=32),
)


@MODELS.register_module()
class VOLO(BaseModule):
    """VOLO (Vision Outlooker, arXiv 2106.13112) backbone.

    Parameter names follow the official release, so sail-sg/volo and timm checkpoints load
    as they are through ``init_cfg=dict(type='Pretrained', checkpoint=PATH)``.

    Outputs (``feature_pyramid=True``, default): four NCHW maps at strides 4, 8, 16, 32 for
    decode heads such as UPerHead, made from the block groups as follows (each tap gets its
    own LayerNorm, ``out_norms.{level}``):

    ====== ====== ========================================= ===========================
    level  stride tapped output                              resampling
    ====== ====== ========================================= ===========================
    0      4      outlooker group (``network.0``)           2x2 stride-2 ConvTranspose
    1      8      outlooker group (``network.0``)           none
    2      16     second transformer group (``network.3``)  none
    3      32     last transformer group (``network.4``)    2x2 max-pool (ceil mode)
    ====== ====== ========================================= ===========================

    Channels: ``(C0, C0, C, C)`` with ``C0 = embed_dims[0]``, ``C = embed_dims[-1]``; e.g.
    D1 (192, 192, 384, 384), D2/D3 (256, 256, 512, 512), D4/D5 (384, 384, 768, 768). The
    attribute ``out_channels`` lists them for the selected ``out_indices``.

    Raw mode (``feature_pyramid=False``): ``out_indices`` pick block groups 0-3 (official
    ``network.0``, ``.2``, ``.3``, ``.4``; strides 8, 16, 16, 16), returned as NCHW with no norm
    or resampling (equal to timm's ``forward_intermediates(norm=False)``).

    Any input size works: the input is zero-padded bottom/right to a multiple of 16,
    ``pos_embed`` is resized (bicubic) when the token grid differs from ``img_size // 16``, and
    each output is cropped to ``ceil(H / stride) x ceil(W / stride)``.

    Args:
        arch: 'd1'..'d5' or a dict with ``layers``, ``embed_dims``, ``num_heads`` (4 entries
            each) and optionally ``mlp_ratio`` (3), ``stem_hidden_dims`` (64). Default: 'd1'.
        img_size: pretraining resolution; sizes ``pos_embed`` as (img_size // 16)^2.
            Default: 224.
        in_channels: input channels. Default: 3.
        out_indices: outputs to return (pyramid levels or block groups, 0-3).
            Default: (0, 1, 2, 3).
        feature_pyramid: pyramid outputs (True) or raw block-group outputs. Default: True.
        frozen_stages: -1 freezes nothing; n >= 0 freezes the stem and block groups < n
            (``pos_embed`` with group 1). Default: -1.
        drop_path_rate: stochastic depth of the last transformer block, increasing linearly
            over the network as in the official code; outlooker blocks get none (official
            models were trained so). Default: 0.
        attn_drop_rate: self-attention dropout. Default: 0.
        qkv_bias: biases in the value/qkv projections. Default: False.
        norm_cfg: token norm. Default: LN with eps 1e-5 (official).
        with_cp: gradient checkpointing per block while training. Default: False.
        norm_eval: keep the stem's BatchNorms in eval mode while training. Default: False.
        outlook_impl: outlook-attention implementation (see :mod:`mmvolo.ops`); None follows
            $MMVOLO_OUTLOOK_IMPL, else 'auto'. Default: None.
        token_mixer: the outlooker stage's token mixer, e.g. ``dict(type='Involution')``
            (see :mod:`mmvolo.models.mixer_builder`); every output keeps its shape. With
            ``init_cfg=Pretrained``, a mixer other than OutlookAttention starts from VOLO's
            init and everything else loads from the checkpoint. Default: None
            (OutlookAttention, the official model).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH or URL)`` loads official/timm/
            converted VOLO weights (a URL is downloaded once into torch.hub's cache); a file
            lacking backbone tensors is refused unless ``allow_missing=True`` is added. Other
            mmengine init configs are applied after VOLO's own init.
    """

    def __init__(self, arch: str | dict = 'd1', img_size: int | Sequence[int] = 224,
                 in_channels: int = 3, out_indices: Sequence[int] = (0, 1, 2, 3),
                 feature_pyramid: bool = True, frozen_stages: int = -1,
                 drop_path_rate: float = 0., attn_drop_rate: float = 0., qkv_bias: bool = False,
                 norm_cfg: dict = DEFAULT_NORM_CFG, with_cp: bool = False,
                 norm_eval: bool = False, outlook_impl: str | None = None,
                 token_mixer: dict | None = None,
                 init_cfg: dict | list | None = None) -> None:
        pretrained_options(init_cfg)  # a bad checkpoint / allow_missing fails at build time
        super().__init__(init_cfg=init_cfg)
        settings = resolve_arch(arch)
        self.token_mixer = mixer_type(token_mixer)
        args = validate_volo_args(img_size=img_size, in_channels=in_channels,
                                  out_indices=out_indices, frozen_stages=frozen_stages,
                                  drop_path_rate=drop_path_rate, attn_drop_rate=attn_drop_rate)
        self.arch_settings = settings
        self.img_size = args['img_size']
        self.in_channels = in_channels
        self.out_indices = args['out_indices']
        self.feature_pyramid = feature_pyramid
        self.frozen_stages = frozen_stages
        self.with_cp = with_cp
        self.norm_eval = norm_eval
        layers, dims, heads = settings['layers'], settings['embed_dims'], settings['num_heads']
        self.num_layers = sum(layers)

        self.patch_embed = PatchEmbed(in_channels, settings['stem_hidden_dims'], dims[0])
        grid = (self.img_size[0] // POS_EMBED_STRIDE, self.img_size[1] // POS_EMBED_STRIDE)
        self.pos_embed = nn.Parameter(torch.zeros(1, *grid, dims[-1]))
        rates = [drop_path_rate * index / max(self.num_layers - 1, 1)
                 for index in range(self.num_layers)]
        network: list[nn.Module] = [nn.Sequential(*[
            Outlooker(dims[0], heads[0], kernel_size=3, padding=1, stride=2,
                      mlp_ratio=settings['mlp_ratio'], qkv_bias=qkv_bias, norm_cfg=norm_cfg,
                      impl=outlook_impl, token_mixer=token_mixer)
            for _ in range(layers[0])])]
        network.append(Downsample(dims[0], dims[1], 2))
        for group in range(1, 4):
            first = sum(layers[:group])
            network.append(nn.Sequential(*[
                VOLOTransformerBlock(dims[group], heads[group], settings['mlp_ratio'], qkv_bias,
                                     attn_drop_rate, rates[first + index], norm_cfg)
                for index in range(layers[group])]))
        self.network = nn.ModuleList(network)

        if feature_pyramid:
            self.out_norms = nn.ModuleDict({
                str(level): build_norm_layer(norm_cfg, dims[PYRAMID[level].group])[1]
                for level in self.out_indices})
            upsampled = [PYRAMID[level].group for level in self.out_indices
                         if PYRAMID[level].resample == 'upsample2x']
            if upsampled:  # one transposed conv: only level 0 upsamples
                self.upsample = nn.ConvTranspose2d(dims[upsampled[0]], dims[upsampled[0]], 2, 2)
        taps = self._tapped_groups()
        self.out_channels = [dims[group] for group in taps]
        self._freeze_stages()

    # ---------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Images (B, in_channels, H, W) -> tuple of NCHW-contiguous maps (class docstring).

        Every output is NCHW-contiguous: the token layout is channels-last, so the maps would
        otherwise be permuted (and cropped) views, which kernels that read memory as NCHW
        (compiled mmcv/mmdet ops, ``view``) misread or reject.
        """
        height, width = self._check_input(x)
        groups = self.forward_groups(_pad_to_multiple(x, POS_EMBED_STRIDE))
        if not self.feature_pyramid:
            return tuple(_crop(groups[i], height, width, GROUP_STRIDES[i]).contiguous()
                         for i in self.out_indices)
        return tuple(self._pyramid_level(level, groups, height, width).contiguous()
                     for level in self.out_indices)

    def forward_groups(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Run the network on padded images (B, C, H, W), H and W multiples of 16.

        Returns:
            {block group: NCHW output} for the groups up to the last one needed.
        """
        last_index = GROUP_NETWORK_INDEX[max(self._tapped_groups())]
        tokens = self.patch_embed(x).permute(0, 2, 3, 1)  # (B, H/8, W/8, C0)
        outputs: dict[int, torch.Tensor] = {}
        for index, module in enumerate(self.network[:last_index + 1]):
            if index == POS_EMBED_NETWORK_INDEX:
                tokens = tokens + resize_pos_embed(self.pos_embed, tokens.shape[1:3])
            tokens = self._run_group(module, tokens)
            if index in GROUP_NETWORK_INDEX:
                outputs[GROUP_NETWORK_INDEX.index(index)] = tokens
        return {group: tokens.permute(0, 3, 1, 2) for group, tokens in outputs.items()}

    def _run_group(self, module: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(module, nn.Sequential):
            return module(tokens)
        for block in module:
            if self.with_cp and self.training and tokens.requires_grad:
                tokens = cp.checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
        return tokens

    def _pyramid_level(self, level: int, groups: dict[int, torch.Tensor], height: int,
                       width: int) -> torch.Tensor:
        spec = PYRAMID[level]
        norm = self.out_norms[str(level)]
        feature = norm(groups[spec.group].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if spec.resample == 'upsample2x':
            feature = self.upsample(feature)
        elif spec.resample == 'maxpool2x':
            feature = F.max_pool2d(feature, 2, 2, ceil_mode=True)
        return _crop(feature, height, width, spec.stride)

    def _tapped_groups(self) -> list[int]:
        """The block group behind each selected output."""
        if self.feature_pyramid:
            return [PYRAMID[level].group for level in self.out_indices]
        return list(self.out_indices)

    def _check_input(self, x: torch.Tensor) -> tuple[int, int]:
        """Shape and dtype checks on tensor attributes only (no graph break under compile)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'VOLO expects images as a (B, {self.in_channels}, H, W) '
                            f'torch.Tensor, got {_describe_input(x)}; convert it first (e.g. '
                            'torch.from_numpy(a).permute(2, 0, 1)[None].float())')
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'VOLO expects images (B, {self.in_channels}, H, W), got a tensor '
                             f'of shape {tuple(x.shape)}')
        if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f'VOLO expects a non-empty batch (B >= 1, H >= 1, W >= 1), got a '
                             f'tensor of shape {tuple(x.shape)}')
        weight_dtype = self.pos_embed.dtype
        if not x.is_floating_point() or (x.dtype != weight_dtype
                                         and not _autocast_accepts(x)):
            raise TypeError(f"VOLO expects a floating-point tensor of the model's dtype "
                            f'{_dtype_name(weight_dtype)}, got {x.dtype}; normalise/convert it '
                            f'first (e.g. x.to({weight_dtype}))')
        return x.shape[2], x.shape[3]

    # ---------------------------------------------------------------------------- training
    def train(self, mode: bool = True) -> VOLO:
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def _freeze_stages(self) -> None:
        frozen: list[nn.Module] = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_embed)
        for group in range(min(self.frozen_stages, 4)):
            start = GROUP_NETWORK_INDEX[group - 1] + 1 if group else 0
            frozen += list(self.network[start:GROUP_NETWORK_INDEX[group] + 1])
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False
        if self.frozen_stages >= 2:
            self.pos_embed.requires_grad = False

    def no_weight_decay(self) -> set[str]:
        """Parameter names that take no weight decay (besides norms and biases)."""
        return {'pos_embed'}

    def get_layer_depth(self, param_name: str, prefix: str = '') -> tuple[int, int]:
        """Layer id of a parameter for layer-wise lr decay, and the number of ids.

        Ids: 0 for the stem and ``pos_embed``; 1..L for the L blocks in network order (the
        downsample joins the first transformer block); L + 1 for everything else (pyramid
        norms/upsampling, heads).
        """
        num_ids = self.num_layers + 2
        if not param_name.startswith(prefix):
            return num_ids - 1, num_ids
        name = param_name[len(prefix):]
        if name.startswith(('patch_embed', 'pos_embed')):
            return 0, num_ids
        found = re.match(r'^network\.(\d+)(?:\.(\d+))?\.', name)
        if not found:
            return num_ids - 1, num_ids
        index = int(found.group(1))
        if index not in GROUP_NETWORK_INDEX:  # the downsample
            return self._blocks_before(GROUP_NETWORK_INDEX.index(index + 1)) + 1, num_ids
        group = GROUP_NETWORK_INDEX.index(index)
        return self._blocks_before(group) + int(found.group(2)) + 1, num_ids

    def _blocks_before(self, group: int) -> int:
        return sum(self.arch_settings['layers'][:group])

    # ---------------------------------------------------------------------------- weights
    def init_weights(self) -> None:
        """Truncated-normal init as the official code, or load ``init_cfg``'s checkpoint."""
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            if self.token_mixer != DEFAULT_TOKEN_MIXER:  # the swapped mixer starts from init
                self.network[GROUP_NETWORK_INDEX[0]].apply(_init_linear)
            checkpoint, allow_missing = pretrained_options(self.init_cfg)
            self.load_pretrained(checkpoint, allow_missing=allow_missing)
            self._is_init = True
            return
        trunc_normal_(self.pos_embed, std=.02)
        self.apply(_init_linear)
        if self.init_cfg is not None:
            super().init_weights()  # the user's own init_cfg, on top
        self._is_init = True

    def load_pretrained(self, checkpoint: str, allow_missing: bool = False) -> None:
        """Load official/timm/converted VOLO weights (pos_embed resized to ``img_size``).

        Every backbone tensor must come from the file, except the ones that are new by design:
        the pyramid layers (``out_norms.*``, ``upsample.*``), a swapped token mixer's
        (``token_mixer=...``; those it shares with OutlookAttention, its class's
        ``OUTLOOK_PARAMETERS``, do load) and BatchNorm ``num_batches_tracked`` counters. The file's
        classification parts are dropped.

        Args:
            checkpoint: a file or an ``http(s)://`` URL (downloaded once into torch.hub's
                cache, see :mod:`mmvolo.download`).
            allow_missing: load a file that lacks backbone tensors; they keep VOLO's init and
                the log names them (``init_cfg=dict(..., allow_missing=True)``).

        Raises:
            CheckpointError: unreadable file, not VOLO, another VOLO variant, or (without
                ``allow_missing``) backbone tensors missing from it (count and first names).
        """
        checkpoint = check_pretrained_checkpoint(checkpoint)
        grid = tuple(self.pos_embed.shape[1:3])
        state_dict, report, notes = load_volo_weights(checkpoint, pos_embed_size=grid)
        mixer_keys = self._swapped_mixer_keys(state_dict)
        for key in mixer_keys['dropped']:
            del state_dict[key]
        self._check_shapes(state_dict, checkpoint)
        result = self.load_state_dict(state_dict, strict=False)
        new_layers = [key for key in result.missing_keys if key.startswith(('out_norms.',
                                                                             'upsample.'))]
        missing = [key for key in result.missing_keys
                   if key not in new_layers and key not in mixer_keys['new']
                   and not key.endswith('num_batches_tracked')]
        if missing and not allow_missing:
            raise CheckpointError(
                f'{checkpoint} lacks {len(missing)} of the backbone\'s tensors '
                f'({_first_names(missing)}), which would stay at random init: use a complete '
                'VOLO checkpoint, or set init_cfg=dict(type="Pretrained", checkpoint=..., '
                'allow_missing=True) to start them from init')
        details = [f'dropped classification-only keys: {len(report.dropped)}']
        if mixer_keys['new']:
            details.append(f"token mixer {self.token_mixer}: newly initialised "
                           f"{len(mixer_keys['new'])} tensors (network.0.*.attn.*), "
                           f"{len(mixer_keys['dropped'])} OutlookAttention tensors of the "
                           'checkpoint not used'
                           + (f", {len(mixer_keys['kept'])} loaded into it"
                              if mixer_keys['kept'] else ''))
        if report.resized:
            details.append(f"pos_embed resized {report.resized['pos_embed'][0]} -> "
                           f"{report.resized['pos_embed'][1]}")
        if new_layers:
            details.append(f'newly initialised pyramid layers: {len(new_layers)} tensors')
        if missing:  # only with allow_missing
            details.append(f'MISSING from checkpoint (allow_missing=True, left at init): '
                           f'{len(missing)} tensors: {missing}')
        log_load_summary('VOLO', len(state_dict), checkpoint, notes, details,
                         result.unexpected_keys, warn=bool(missing))

    def _swapped_mixer_keys(self, state_dict: dict[str, torch.Tensor]) -> dict[str, list[str]]:
        """With a mixer other than OutlookAttention: the checkpoint's outlook-attention
        tensors it loads (``kept``: those its class names in ``OUTLOOK_PARAMETERS``, e.g.
        DeformableOutlook's ``v``/``attn``/``proj``, where the shapes agree), its other
        parameters (``new``, left at VOLO's init) and the unused checkpoint tensors
        (``dropped``)."""
        if self.token_mixer == DEFAULT_TOKEN_MIXER:
            return {'new': [], 'dropped': [], 'kept': []}
        pattern = re.compile(rf'^network\.{GROUP_NETWORK_INDEX[0]}\.\d+\.attn\.')
        mixer_class = type(self.network[GROUP_NETWORK_INDEX[0]][0].attn)
        shared = tuple(f'.attn.{name}.' for name in getattr(mixer_class, 'OUTLOOK_PARAMETERS',
                                                              ()))
        own = self.state_dict()
        kept = [key for key, value in state_dict.items()
                if pattern.match(key) and any(part in key for part in shared)
                and key in own and own[key].shape == value.shape]
        return {'new': [key for key in own if pattern.match(key) and key not in kept],
                'dropped': [key for key in state_dict if pattern.match(key) and key not in kept],
                'kept': kept}

    def _check_shapes(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        own = self.state_dict()
        bad = [key for key, value in state_dict.items()
               if key in own and own[key].shape != value.shape]
        if not bad:
            return
        try:
            name, size = detect_arch(state_dict)
            found = f"VOLO-{name} (pretrained at {size[0]}x{size[1]})" if size else name
        except CheckpointError:
            found = describe_state_dict(state_dict)
        raise CheckpointError(
            f'{source} holds {found} weights whose shapes do not fit this backbone '
            f'(first mismatch: {bad[0]} {tuple(state_dict[bad[0]].shape)} vs '
            f'{tuple(own[bad[0]].shape)}); set arch to match the checkpoint')


def check_pretrained_checkpoint(checkpoint: Any) -> str:
    """``init_cfg=Pretrained``'s ``checkpoint``: a non-empty path or ``http(s)://`` URL.

    Raises:
        ValueError: anything else (None, '', a number...), one line.
    """
    if isinstance(checkpoint, os.PathLike):
        checkpoint = os.fspath(checkpoint)
    if not isinstance(checkpoint, str) or not checkpoint.strip():
        raise ValueError(f"VOLO init_cfg=dict(type='Pretrained', checkpoint={checkpoint!r}): "
                         'checkpoint must be a path or an http(s):// URL of VOLO weights (or '
                         'drop init_cfg to start from random init)')
    return checkpoint


def pretrained_options(init_cfg: Any) -> tuple[str, bool]:
    """(checkpoint, allow_missing) of a ``dict(type='Pretrained', ...)`` init_cfg, checked;
    ('', False) for any other init_cfg (nothing to load).

    Raises:
        ValueError: the checkpoint is not a path or URL, or allow_missing is not a bool.
    """
    if not isinstance(init_cfg, dict) or init_cfg.get('type') != 'Pretrained':
        return '', False
    checkpoint = check_pretrained_checkpoint(init_cfg.get('checkpoint'))
    allow_missing = init_cfg.get('allow_missing', False)
    if not isinstance(allow_missing, bool):
        raise ValueError(f"VOLO init_cfg=dict(type='Pretrained', allow_missing="
                         f'{allow_missing!r}): allow_missing must be True or False')
    return checkpoint, allow_missing


def _first_names(keys: list[str], shown: int = 3) -> str:
    """'a, b, c and 4 more' for error messages."""
    more = f' and {len(keys) - shown} more' if len(keys) > shown else ''
    return ', '.join(keys[:shown]) + more


def _describe_input(x: Any) -> str:
    """'a numpy.ndarray of shape (224, 224, 3)', 'a list'... for the input TypeError."""
    kind = type(x)
    name = kind.__name__ if kind.__module__ == 'builtins' else f'{kind.__module__}.{kind.__name__}'
    shape = getattr(x, 'shape', None)
    return f'a {name}' + (f' of shape {tuple(shape)}' if shape is not None else '')


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def check_img_size(img_size: int | Sequence[int]) -> tuple[int, int]:
    """``img_size`` as (H, W); ints of at least :data:`POS_EMBED_STRIDE` (16)."""
    sizes = (img_size, img_size) if is_int(img_size) else img_size
    if (not isinstance(sizes, Sequence) or len(sizes) != 2
            or not all(is_int(size) for size in sizes)):
        raise TypeError('must be an int or a pair of ints (H, W)')
    if min(sizes) < POS_EMBED_STRIDE:
        raise ValueError(f'must be >= {POS_EMBED_STRIDE} (pos_embed has img_size // '
                         f'{POS_EMBED_STRIDE} entries per side)')
    return int(sizes[0]), int(sizes[1])


def check_in_channels(in_channels: int) -> int:
    """``in_channels``: an int >= 1."""
    if not is_int(in_channels):
        raise TypeError('must be an int')
    if in_channels < 1:
        raise ValueError('must be >= 1')
    return int(in_channels)


def check_out_indices(out_indices: int | Sequence[int]) -> tuple[int, ...]:
    """``out_indices`` as a tuple: a non-empty selection of the 4 outputs, 0..3."""
    indices = (out_indices,) if is_int(out_indices) else out_indices
    if (not isinstance(indices, Sequence) or isinstance(indices, str)
            or not all(is_int(index) for index in indices)):
        raise TypeError('must be an int or a sequence of ints in 0..3')
    if not indices or not all(0 <= index < 4 for index in indices):
        raise ValueError('must be a non-empty subset of 0..3 (4 pyramid levels / block groups)')
    return tuple(int(index) for index in indices)


def check_frozen_stages(frozen_stages: int) -> int:
    """``frozen_stages``: -1 (none) to 4 (all block groups)."""
    if not is_int(frozen_stages):
        raise TypeError('must be an int in -1..4')
    if not -1 <= frozen_stages <= 4:
        raise ValueError('must be in -1..4 (-1 freezes nothing, 4 every block group)')
    return int(frozen_stages)


#: The checks of VOLO's constructor arguments, by name; each returns the normalised value or
#: raises ValueError/TypeError with the rule (see :func:`validate_volo_args`).
VOLO_ARG_CHECKS: dict[str, Callable[[Any], Any]] = {
    'img_size': check_img_size,
    'in_channels': check_in_channels,
    'out_indices': check_out_indices,
    'frozen_stages': check_frozen_stages,
    'drop_path_rate': rate,
    'attn_drop_rate': rate,
}


def validate_volo_arg(name: str, value: Any) -> Any:
    """Check one VOLO argument (a key of :data:`VOLO_ARG_CHECKS`); returns it normalised.

    Raises:
        ValueError, TypeError: with the rule, e.g. ``out_indices=(0, 5): must be ...``.
    """
    return check_arg(name, value, VOLO_ARG_CHECKS[name])


def validate_volo_args(**args: Any) -> dict[str, Any]:
    """Check VOLO constructor arguments by name; returns them normalised.

    Raises:
        ValueError, TypeError: one line, ``VOLO <name>=<value>: <rule>``.
    """
    return check_args('VOLO', VOLO_ARG_CHECKS, args)


def _autocast_accepts(x: torch.Tensor) -> bool:
    """Whether autocast will cast ``x`` to the compute dtype (it casts float16/32/bf16)."""
    return x.dtype != torch.float64 and torch.is_autocast_enabled(x.device.type)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix('torch.')


def _pad_to_multiple(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) bottom/right so H and W are multiples of ``divisor``."""
    pad_h = -x.shape[2] % divisor
    pad_w = -x.shape[3] % divisor
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def _crop(feature: torch.Tensor, height: int, width: int, stride: int) -> torch.Tensor:
    """Crop an NCHW map of the padded input to ceil(height/stride) x ceil(width/stride)."""
    return feature[:, :, :math.ceil(height / stride), :math.ceil(width / stride)]
