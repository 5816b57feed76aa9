"""VOLO's classification head for mmpretrain: class attention, norm, linear + aux heads."""
from __future__ import annotations

import torch
import torch.nn as nn
from mmengine.model.weight_init import trunc_normal_
from mmpretrain.models.heads import ClsHead
from mmpretrain.structures import DataSample

from ..models.blocks import DEFAULT_NORM_CFG
from ..models.weights import (
    HEAD_KEY_PATTERN,
    CheckpointError,
    load_volo_weights,
    log_load_summary,
)
from ..registry import MODELS
from .class_attention import ClassBlock

#: Parameters whose first dimension is the number of classes.
CLASS_DIM_KEYS = ('head.weight', 'head.bias', 'aux_head.weight', 'aux_head.bias')


@MODELS.register_module()
class VOLOClsHead(ClsHead):
    """VOLO's head: class token + class-attention blocks, LayerNorm, linear classifier and
    the token-labeling auxiliary classifier, with the official parameter names
    (``cls_token``, ``post_network.{i}.*``, ``norm``, ``head``, ``aux_head``).

    Use it after ``VOLO(feature_pyramid=False, out_indices=(3,))``.

    Logits (``forward``, used by ``predict``): ``head(cls) + aux_eval_weight * max over the
    patch tokens of aux_head(tokens)`` (the official evaluation rule with 0.5).

    Loss: the configured loss of the class-token logits (``loss``), plus, when
    ``aux_loss_weight > 0``, ``aux_loss_weight`` times the same loss of the aux logits
    max-pooled over tokens (``loss_aux``), which keeps the aux classifier that the evaluation
    rule adds trained without token-level labels.

    Args:
        num_classes: classes.
        in_channels: token channels C (``embed_dims[-1]`` of the backbone).
        num_heads: class-attention heads (``num_heads[-1]`` of the backbone).
        mlp_ratio: class-block MLP hidden size / C. Default: 3 (4 for D5).
        num_post_layers: class-attention blocks. Default: 2.
        qkv_bias: biases in the q / kv projections. Default: False.
        drop_rate: dropout in the class blocks and before the classifiers. Default: 0.
        attn_drop_rate: class-attention dropout. Default: 0.
        use_aux_head: build the aux classifier. Default: True.
        aux_eval_weight: weight of the max-pooled aux logits in the logits. Default: 0.5.
        aux_loss_weight: weight of ``loss_aux``. Default: 0.5.
        norm_cfg: norm of the class blocks and the final norm. Default: LN eps 1e-5.
        loss: loss config. Default: None (CrossEntropyLoss).
        topk, cal_acc: as :class:`mmpretrain.models.heads.ClsHead`.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads the head of a VOLO
            checkpoint (official/timm, or converted with ``--keep-head``); classifier weights
            of another class count are skipped (fine-tuning on new classes).

    Shapes:
        feats: tuple whose last item is (B, C, H, W) -> logits (B, num_classes).
    """

    def __init__(self, num_classes: int, in_channels: int, num_heads: int,
                 mlp_ratio: float = 3., num_post_layers: int = 2, qkv_bias: bool = False,
                 drop_rate: float = 0., attn_drop_rate: float = 0., use_aux_head: bool = True,
                 aux_eval_weight: float = 0.5, aux_loss_weight: float = 0.5,
                 norm_cfg: dict = DEFAULT_NORM_CFG,
                 loss: dict | None = None,
                 topk: int | tuple[int, ...] = (1, ), cal_acc: bool = False,
                 init_cfg: dict | list | None = None) -> None:
        loss = loss if loss is not None else dict(type='CrossEntropyLoss', loss_weight=1.0)
        super().__init__(loss=loss, topk=topk, cal_acc=cal_acc, init_cfg=init_cfg)
        if num_classes <= 0:
            raise ValueError(f'VOLOClsHead: num_classes must be positive, got {num_classes}')
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.aux_eval_weight = aux_eval_weight
        self.aux_loss_weight = aux_loss_weight if use_aux_head else 0.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, in_channels))
        self.post_network = nn.ModuleList([
            ClassBlock(in_channels, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                       norm_cfg=norm_cfg)
            for _ in range(num_post_layers)])
        self.norm = nn.LayerNorm(in_channels, eps=norm_cfg.get('eps', 1e-5))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(in_channels, num_classes)
        self.aux_head = nn.Linear(in_channels, num_classes) if use_aux_head else None

    # ---------------------------------------------------------------------------- forward
    def forward_tokens(self, feats: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """(B, C, H, W) map -> normed tokens (B, 1 + H*W, C), class token first."""
        tokens = feats[-1].flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in self.post_network:
            tokens = block(tokens)
        return self.norm(tokens)

    def pre_logits(self, feats: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The normed class token (B, C)."""
        return self.forward_tokens(feats)[:, 0]

    def split_logits(self, feats: tuple[torch.Tensor, ...]
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(class-token logits (B, K), aux logits max-pooled over tokens (B, K) or None)."""
        tokens = self.head_drop(self.forward_tokens(feats))
        cls_logits = self.head(tokens[:, 0])
        if self.aux_head is None:
            return cls_logits, None
        return cls_logits, self.aux_head(tokens[:, 1:]).max(dim=1).values

    def forward(self, feats: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Logits (B, num_classes) by the official rule: cls + 0.5 * max-pooled aux."""
        cls_logits, aux_logits = self.split_logits(feats)
        if aux_logits is None:
            return cls_logits
        return cls_logits + self.aux_eval_weight * aux_logits

    def loss(self, feats: tuple[torch.Tensor, ...], data_samples: list[DataSample],
             **kwargs) -> dict:
        """``loss`` on the class-token logits (+ ``loss_aux``, see the class docstring)."""
        cls_logits, aux_logits = self.split_logits(feats)
        losses = self._get_loss(cls_logits, data_samples, **kwargs)
        if aux_logits is not None and self.aux_loss_weight > 0:
            aux_loss = self._get_loss(aux_logits, data_samples, **kwargs)['loss']
            losses['loss_aux'] = self.aux_loss_weight * aux_loss
        return losses

    # ---------------------------------------------------------------------------- weights
    def init_weights(self) -> None:
        """Truncated-normal init as the official code, or load ``init_cfg``'s checkpoint."""
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            self.load_pretrained(self.init_cfg['checkpoint'])
            self._is_init = True
            return
        trunc_normal_(self.cls_token, std=.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.init_cfg is not None:
            super().init_weights()
        self._is_init = True

    def load_pretrained(self, checkpoint: str) -> None:
        """Load the head of a VOLO checkpoint (flat official keys or ``head.*``).

        Raises:
            CheckpointError: unreadable file, not VOLO, no head, or another width.
        """
        state_dict, _, notes = load_volo_weights(checkpoint, keep_head=True)
        head = {key: value for key, value in state_dict.items() if HEAD_KEY_PATTERN.match(key)}
        if not head:
            raise CheckpointError(f'{checkpoint} holds no VOLO classification head; convert '
                                  'the official weights with --keep-head')
        own = self.state_dict()
        bad = [key for key, value in head.items() if key in own and own[key].shape != value.shape]
        skipped = [key for key in bad if key in CLASS_DIM_KEYS]
        if len(skipped) != len(bad):
            key = next(key for key in bad if key not in CLASS_DIM_KEYS)
            raise CheckpointError(
                f'{checkpoint}: head weights do not fit this head (first mismatch: {key} '
                f'{tuple(head[key].shape)} vs {tuple(own[key].shape)}); set in_channels, '
                'num_heads and mlp_ratio to match the checkpoint')
        result = self.load_state_dict({k: v for k, v in head.items() if k not in skipped},
                                      strict=False)
        details = []
        if skipped:
            details.append(f'kept the initialisation of {skipped} (checkpoint has '
                           f'{head[skipped[0]].shape[0]} classes, this head {self.num_classes})')
        missing = [key for key in result.missing_keys if key not in skipped]
        if missing:
            details.append(f'MISSING from checkpoint: {missing}')
        log_load_summary('VOLOClsHead', len(head) - len(skipped), checkpoint, notes, details,
                         result.unexpected_keys)
