"""Parameters and FLOPs of a segmentor built from a config, with mmengine's analysis tools.

What is counted (mmengine's fvcore-derived counter; one FLOP = one multiply-add):

* the inference path ``EncoderDecoder._forward``: backbone + decode head on one image of the
  given size, up to the decode head's logits at stride 4 (no final resize to the image, no
  auxiliary head, no data preprocessing);
* convolutions, linear layers, matmuls/bmm, norms, bilinear upsampling and adaptive pooling;
* outlook attention through its reference implementation (unfold -> softmax(A) @ V -> fold),
  whose ``A @ V`` matmul the counter sees (the default CPU/GPU kernels are opaque custom ops);
* self-attention (``F.scaled_dot_product_attention``, which mmengine does not count) through
  a handle added here: ``QK^T`` plus ``AV`` multiply-adds.

Not counted: element-wise ops (softmax, GELU, additions, pooling other than adaptive), the
unfold/fold data movement; :class:`Complexity` lists these ops as ``uncounted_ops``.
Parameters are counted for the whole model, auxiliary head included, and per top-level module.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import get_shape
from mmengine.config import Config

from .config import build_model_for_analysis


@dataclass
class Complexity:
    """FLOPs (multiply-adds) of one forward and parameter counts."""

    input_shape: tuple[int, int]
    flops: int
    params: int
    params_by_module: dict[str, int] = field(default_factory=dict)
    uncounted_ops: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """Human-readable lines (G = 1e9, M = 1e6)."""
        modules = ', '.join(f'{name} {count / 1e6:.2f}M'
                            for name, count in self.params_by_module.items())
        return '\n'.join([
            f'Input shape: {self.input_shape[0]}x{self.input_shape[1]}',
            f'FLOPs (multiply-adds, backbone + decode head): {self.flops / 1e9:.2f}G',
            f'Params (all modules): {self.params / 1e6:.2f}M ({modules})',
            'Not counted (element-wise / data movement): '
            + (', '.join(f'{op} x{n}' for op, n in sorted(self.uncounted_ops.items()))
               or 'none'),
        ])


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """Multiply-adds of ``aten::scaled_dot_product_attention``: QK^T and AV."""
    q_shape, k_shape, v_shape = (get_shape(value) for value in inputs[:3])
    batch_heads = int(torch.Size(q_shape[:-2]).numel())
    queries, dim = q_shape[-2], q_shape[-1]
    keys, value_dim = k_shape[-2], v_shape[-1]
    return batch_heads * queries * keys * (dim + value_dim)


def measure_complexity(model: nn.Module, shape: Sequence[int]) -> Complexity:
    """Count ``model``'s FLOPs on one (1, 3, H, W) input and its parameters.

    Args:
        model: a segmentor (its ``forward(inputs)`` runs ``_forward`` in 'tensor' mode) or any
            module taking an image batch.
        shape: (H, W) of the input.
    """
    height, width = int(shape[0]), int(shape[1])
    inputs = (torch.rand(1, 3, height, width),)
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_jit)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    with torch.no_grad():
        flops = analyzer.total()
    counts = parameter_count(model)
    by_module = {name: counts[name] for name, _ in model.named_children() if counts.get(name)}
    return Complexity((height, width), int(flops), int(counts['']), by_module,
                      dict(analyzer.unsupported_ops()))


def config_complexity(cfg: Config | str, shape: Sequence[int],
                      cfg_options: dict | None = None) -> Complexity:
    """Build the model of ``cfg`` (see :func:`build_model_for_analysis`) and measure it."""
    return measure_complexity(build_model_for_analysis(cfg, cfg_options), shape)
