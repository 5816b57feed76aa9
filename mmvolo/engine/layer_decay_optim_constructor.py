"""Layer-wise learning-rate decay for VOLO, as an mmengine optimizer-wrapper constructor.

Registered in mmengine's root ``OPTIM_WRAPPER_CONSTRUCTORS``, so ``constructor=
'VOLOLayerDecayOptimWrapperConstructor'`` resolves under mmseg's (or any OpenMMLab 2.x
package's) default scope, whose registries are children of the root ones.

Each trainable parameter gets a layer id from the backbone's ``get_layer_depth`` (VOLO: 0 for
the stem and ``pos_embed``, 1..L for the L blocks, L + 1 for the pyramid layers); every
parameter outside the backbone (decode and auxiliary heads) gets the top id L + 1. The
learning rate of id ``i`` is ``lr * layer_decay_rate ** (L + 1 - i)``, so the heads train at the
base lr and the stem at the smallest. Weight decay is off for 1-D parameters (biases, every
norm's weight), for the backbone's ``no_weight_decay()`` names (``pos_embed``) and for names
containing any of ``no_decay_keys``.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS

#: Keys understood in ``paramwise_cfg``.
PARAMWISE_KEYS = ('layer_decay_rate', 'no_decay_keys', 'custom_keys')
#: Keys understood in each ``custom_keys`` entry (mmengine's meaning).
CUSTOM_KEY_FIELDS = ('lr_mult', 'decay_mult')


@dataclass
class ParamAssignment:
    """Where one parameter goes: its layer id and whether it takes weight decay."""

    name: str
    layer_id: int
    decay: bool
    ndim: int


@dataclass
class LayerDecayPlan:
    """The layer ids and decay flags of a model's trainable parameters."""

    num_layer_ids: int
    assignments: list[ParamAssignment] = field(default_factory=list)

    def lr_scale(self, layer_id: int, decay_rate: float) -> float:
        """Learning-rate factor of ``layer_id``: 1 for the top id, ``decay_rate`` per id below."""
        return decay_rate ** (self.num_layer_ids - 1 - layer_id)


def _layer_depth_source(model: nn.Module) -> tuple[Any, str]:
    """The module that answers ``get_layer_depth`` and the parameter-name prefix it owns."""
    if hasattr(model, 'get_layer_depth'):
        return model, ''
    backbone = getattr(model, 'backbone', None)
    if backbone is not None and hasattr(backbone, 'get_layer_depth'):
        return backbone, 'backbone.'
    raise TypeError(
        f'VOLOLayerDecayOptimWrapperConstructor needs a model with get_layer_depth() or a '
        f'.backbone with it (such as VOLO); got {type(model).__name__}')


def plan_layer_decay(model: nn.Module, no_decay_keys: Iterable[str] = ()) -> LayerDecayPlan:
    """Assign every trainable parameter of ``model`` a layer id and a weight-decay flag.

    Args:
        model: a segmentor/classifier with a ``backbone`` that has ``get_layer_depth``, or
            such a backbone itself.
        no_decay_keys: extra name substrings that take no weight decay.

    Returns:
        The plan; frozen parameters (``requires_grad=False``) are left out.
    """
    source, prefix = _layer_depth_source(model)
    no_decay_names = {prefix + name for name in getattr(source, 'no_weight_decay', set)()}
    keys = tuple(no_decay_keys)
    num_ids = None
    assignments = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer_id, num_ids = source.get_layer_depth(name, prefix)
        no_decay = (param.ndim <= 1 or name in no_decay_names
                    or any(key in name for key in keys))
        assignments.append(ParamAssignment(name, layer_id, not no_decay, param.ndim))
    if num_ids is None:
        raise ValueError('VOLOLayerDecayOptimWrapperConstructor: the model has no trainable '
                         'parameters')
    return LayerDecayPlan(num_ids, assignments)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class VOLOLayerDecayOptimWrapperConstructor:
    """Build an optimizer wrapper with layer-wise lr decay and no decay on norms/bias/pos_embed.

    Config example (mmseg)::

        optim_wrapper = dict(
            type='OptimWrapper',
            optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
            constructor='VOLOLayerDecayOptimWrapperConstructor',
            paramwise_cfg=dict(layer_decay_rate=0.9))

    Why not mmpretrain's ``LearningRateDecayOptimWrapperConstructor``: it asks the *model*
    for ``get_layer_depth`` (mmseg's ``EncoderDecoder`` has none, so it raises
    NotImplementedError for every segmentor), it ignores ``lr_mult`` in ``custom_keys``
    (heads commonly train at 10x), and it would make mmpretrain a requirement of segmentation
    training. This one asks the backbone and puts every head at the top layer id.

    Args:
        optim_wrapper_cfg: the ``optim_wrapper`` config without ``constructor`` and
            ``paramwise_cfg``; must hold ``optimizer`` with ``lr``.
        paramwise_cfg: ``layer_decay_rate`` (float in (0, 1], default 0.9),
            ``no_decay_keys`` (name substrings without weight decay, default none besides 1-D
            params and the backbone's ``no_weight_decay()``) and ``custom_keys`` (mmengine's:
            ``{name substring: dict(lr_mult=..., decay_mult=...)}``, the longest matching
            substring wins; ``lr_mult`` multiplies the layer-decayed lr, ``decay_mult`` sets
            the weight decay to ``weight_decay * decay_mult``, overriding the 1-D/no-decay
            rules). Other keys raise.

    Each parameter group carries ``layer_id`` and ``lr_scale`` besides ``lr`` and
    ``weight_decay``; mmengine's schedulers scale each group's own initial lr, so the decay
    survives warm-up and poly decay.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        if not isinstance(optim_wrapper_cfg, dict) or 'optimizer' not in optim_wrapper_cfg:
            raise TypeError('optim_wrapper_cfg must be a dict with an "optimizer" entry, got '
                            f'{optim_wrapper_cfg!r}')
        self.optim_wrapper_cfg = dict(optim_wrapper_cfg)
        self.optimizer_cfg = dict(self.optim_wrapper_cfg.pop('optimizer'))
        if 'lr' not in self.optimizer_cfg:
            raise ValueError('VOLOLayerDecayOptimWrapperConstructor: optimizer needs "lr"')
        self.base_lr = float(self.optimizer_cfg['lr'])
        self.base_wd = float(self.optimizer_cfg.get('weight_decay', 0.))
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = sorted(set(paramwise_cfg) - set(PARAMWISE_KEYS))
        if unknown:
            raise ValueError(f'VOLOLayerDecayOptimWrapperConstructor: unsupported paramwise_cfg '
                             f'keys {unknown}; supported: {list(PARAMWISE_KEYS)}')
        self.decay_rate = float(paramwise_cfg.get('layer_decay_rate', 0.9))
        if not 0. < self.decay_rate <= 1.:
            raise ValueError(f'layer_decay_rate must be in (0, 1], got {self.decay_rate}')
        self.no_decay_keys = tuple(paramwise_cfg.get('no_decay_keys', ()))
        self.custom_keys = _checked_custom_keys(paramwise_cfg.get('custom_keys', {}))

    def __call__(self, model: nn.Module) -> OptimWrapper:
        """Build the optimizer over ``model``'s trainable parameters and wrap it."""
        model = getattr(model, 'module', model)  # DDP and other wrappers
        groups = self.param_groups(model)
        optimizer_cfg = dict(self.optimizer_cfg)
        optimizer_cfg[_first_arg_name(optimizer_cfg['type'])] = groups
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        wrapper_cfg = dict(self.optim_wrapper_cfg)
        wrapper_cfg.setdefault('type', 'OptimWrapper')
        return OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Parameter groups, one per (layer id, decay flag), top layer id first.

        The first group holds the heads at the base lr; mmengine logs the first group's lr,
        so the training log shows the base schedule.
        """
        plan = plan_layer_decay(model, self.no_decay_keys)
        params = dict(model.named_parameters())
        grouped: dict[tuple[int, bool, str], list] = {}
        for item in plan.assignments:
            key = (item.layer_id, item.decay, _matching_key(item.name, self.custom_keys))
            grouped.setdefault(key, []).append(params[item.name])
        groups = []
        for (layer_id, decay, custom), members in sorted(grouped.items(), reverse=True):
            scale = plan.lr_scale(layer_id, self.decay_rate)
            weight_decay = self.base_wd if decay else 0.
            if custom:
                scale *= self.custom_keys[custom].get('lr_mult', 1.)
                weight_decay = self.base_wd * self.custom_keys[custom].get('decay_mult', 1.)
            groups.append(dict(params=members, lr=self.base_lr * scale,
                               weight_decay=weight_decay, layer_id=layer_id, lr_scale=scale))
        print_log(summarize(plan, groups, self.decay_rate), logger='current')
        return groups


def _checked_custom_keys(custom_keys: Any) -> dict[str, dict[str, float]]:
    if not isinstance(custom_keys, dict):
        raise TypeError(f'paramwise_cfg.custom_keys must be a dict, got {custom_keys!r}')
    for key, fields in custom_keys.items():
        unknown = sorted(set(fields) - set(CUSTOM_KEY_FIELDS)) if isinstance(fields, dict) \
            else ['(not a dict)']
        if unknown:
            raise ValueError(f'paramwise_cfg.custom_keys[{key!r}]: unsupported {unknown}; '
                             f'supported: {list(CUSTOM_KEY_FIELDS)}')
    return {key: dict(fields) for key, fields in custom_keys.items()}


def _matching_key(name: str, custom_keys: dict[str, dict[str, float]]) -> str:
    """The longest ``custom_keys`` entry contained in ``name`` ('' if none)."""
    matches = [key for key in custom_keys if key in name]
    return max(matches, key=len) if matches else ''


def summarize(plan: LayerDecayPlan, groups: list[dict[str, Any]], decay_rate: float) -> str:
    """One-paragraph summary of the groups for the training log."""
    tensors = sum(len(group['params']) for group in groups)
    numel = sum(p.numel() for group in groups for p in group['params'])
    no_decay = [item for item in plan.assignments if not item.decay]
    named = sorted(item.name for item in no_decay if item.ndim > 1)
    top = plan.num_layer_ids - 1
    return (f'VOLOLayerDecayOptimWrapperConstructor: {len(groups)} param groups over '
            f'{plan.num_layer_ids} layer ids (decay rate {decay_rate}); lr scale '
            f'{plan.lr_scale(0, decay_rate):.4g} at id 0 (stem, pos_embed) up to 1 at id {top} '
            f'(pyramid layers, heads); {tensors} tensors / {numel / 1e6:.2f}M params; '
            f'{len(no_decay)} tensors without weight decay (1-D biases and norm weights'
            + (f', and {", ".join(named)}' if named else '') + ')')


def _first_arg_name(optimizer_type: Any) -> str:
    """Name of the optimizer's parameter argument ('params' for torch optimizers)."""
    optimizer_cls = optimizer_type
    if isinstance(optimizer_type, str):
        with OPTIMIZERS.switch_scope_and_registry(None) as registry:
            optimizer_cls = registry.get(optimizer_type)
    if optimizer_cls is None:
        raise KeyError(f'optimizer {optimizer_type!r} is not registered')
    return next(iter(inspect.signature(optimizer_cls).parameters))
