"""``load_from``: refuse weights that do not fit the backbone; summarise what loads.

mmengine loads ``load_from`` non-strictly: a ResNet file, a VOLO-D3 file for a D1 model or a
bare backbone file (keys without ``backbone.``) loads nothing, logs warnings among hundreds
of lines and trains from scratch with exit code 0. Here the file is compared with the model
the config builds before training: every backbone tensor must be there with its shape
(heads may differ: fine-tuning to other classes is what ``load_from`` is for), and the tools
print one line of what loads.

``load_from`` may be an ``http(s)://`` URL: the check downloads it once into torch.hub's cache
(:mod:`mmvolo.download`), and the Runner's own load then reads that cached file through the
http(s) scheme :func:`mmvolo.runtime.register_checkpoint_loader` installs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mmengine.config import Config

from ..models.weights import describe_state_dict, is_volo_state_dict
from .checks import UsageError, expected_shapes, model_state_dict, read_checkpoint_for_tool

BACKBONE_PREFIX = 'backbone.'


@dataclass
class LoadPlan:
    """How the tensors of a file meet the tensors of a model (keys as in the model)."""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def summary(self, path: str) -> str:
        """One line: counts, and an example of each kind that does not load."""
        parts = [f'{len(self.loaded)} tensors loaded']
        for name, keys in (('missing', self.missing), ('unexpected', self.unexpected),
                           ('shape-mismatched', self.mismatched)):
            parts.append(f'{len(keys)} {name}' + (f' (e.g. {keys[0]})' if keys else ''))
        return f'[mmvolo] load_from {path}: ' + ', '.join(parts)


def plan_load(state_dict: dict, expected: dict[str, tuple[int, ...]]) -> LoadPlan:
    """Compare a file's tensors with the model's (``num_batches_tracked`` counters ignored)."""
    plan = LoadPlan()
    for key, shape in expected.items():
        if key not in state_dict:
            if not key.endswith('num_batches_tracked'):
                plan.missing.append(key)
        elif tuple(state_dict[key].shape) == shape:
            plan.loaded.append(key)
        else:
            plan.mismatched.append(key)
    plan.unexpected = [key for key in state_dict if key not in expected]
    return plan


def check_load_from(path: str, cfg: Config, trust: bool = False) -> str:
    """Refuse a ``load_from`` file whose backbone tensors do not fit ``cfg``'s model.

    Returns:
        The one-line summary of what loads (:meth:`LoadPlan.summary`).

    Raises:
        UsageError: missing, unreadable or untrusted file, bare backbone weights, or backbone
            tensors missing or of other shapes (exit code 1; one line saying what it is).
    """
    state_dict = model_state_dict(read_checkpoint_for_tool(path, trust, what='load_from'))
    expected = expected_shapes(cfg)
    plan = plan_load(state_dict, expected)
    backbone_keys = [key for key in expected if key.startswith(BACKBONE_PREFIX)]
    _require_backbone(path, state_dict, plan, backbone_keys)
    return plan.summary(path)


def _require_backbone(path: str, state_dict: dict, plan: LoadPlan,
                      backbone_keys: list[str]) -> None:
    if not any(key.startswith(BACKBONE_PREFIX) for key in state_dict):
        if is_volo_state_dict(state_dict):
            raise UsageError(
                f'load_from {path} holds bare VOLO backbone weights (no "backbone." keys), so '
                'nothing would load: set model.backbone.init_cfg=dict(type="Pretrained", '
                'checkpoint=...) instead', exit_code=1)
        raise UsageError(f'load_from {path} is not a checkpoint of this model '
                         f'({describe_state_dict(state_dict)})', exit_code=1)
    wanted = set(backbone_keys)
    bad = [key for key in plan.missing + plan.mismatched if key in wanted]
    if bad:
        raise UsageError(
            f'load_from {path} does not fit this backbone: {len(bad)} of its '
            f'{len(backbone_keys)} tensors are missing or differ in shape, e.g. {bad[0]} '
            '(another arch or model?); nothing was trained', exit_code=1)
