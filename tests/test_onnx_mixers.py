"""ONNX export of a tiny VOLO backbone with each token mixer, checked in onnxruntime.

For every mixer (OutlookAttention, Involution, LocalSelfAttention, DWConvMixer,
DeformableOutlook, DCNv3Mixer) the backbone (TINY_ARCH, 32x48 input, offset/mask predictors
drawn away from zero so the deformable ones sample off the integer grid) is exported by
:func:`mmvolo.deploy.onnx_export.export` (the tool's exporter) and run in onnxruntime's CPU
provider; each of its four outputs must equal PyTorch's within 1e-4 (docs/deploy.md), and
the graph must use standard ONNX ops only.

Two paths:
* ``reference``: every op forced to its reference impl (:func:`mmvolo.ops.forced_impl`), the
  path the issue asks every mixer to export through;
* ``tool``: ``export()`` as the tool calls it (it forces outlook attention only; the other
  ops keep their automatic choice), for the mixers whose op it does not force.

The cases marked xfail are known failures outside the mixers (their reasons say where).
"""
from __future__ import annotations

import contextlib
import io

import pytest
import torch

ort = pytest.importorskip('onnxruntime')
pytest.importorskip('onnx')
pytest.importorskip('onnxscript')

from mmvolo.deploy.onnx_export import export  # noqa: E402
from mmvolo.models import VOLO  # noqa: E402
from mmvolo.models.arch_zoo import TINY_ARCH  # noqa: E402
from mmvolo.ops import forced_impl  # noqa: E402

TOLERANCE = 1e-4
OPSET = 18
MIXERS = ['OutlookAttention', 'Involution', 'LocalSelfAttention', 'DWConvMixer',
          'DeformableOutlook', 'DCNv3Mixer']
#: onnxscript 0.7.2's optimizer (torch.onnx.export's default ``optimize=True``) writes an
#: invalid model when one tensor is clamped twice with the same bounds (a Clip whose
#: min/max initialisers were dropped: "Node input 'floor_min_1' is not a graph input"); the
#: reference bilinear gather of ``local_aggregate`` clamps each corner's floor index once
#: per neighbouring corner.
CLIP_BUG = pytest.mark.xfail(
    raises=Exception, strict=False,
    reason="local_aggregate's reference gather trips onnxscript's optimizer (duplicate Clip "
           'of one tensor: invalid model); owner: mmvolo/ops/local_aggregate.py')
#: export() forces only outlook attention to 'reference'; the other ops' fast paths are
#: custom ops (mmvolo::involution_fast_fwd, mmvolo::local_attention_fast_fwd,
#: mmvolo::local_aggregate_fast_fwd) that ONNX cannot express.
TOOL_FORCES_OUTLOOK_ONLY = pytest.mark.xfail(
    raises=Exception, strict=False,
    reason='export() forces only the outlook op to reference; the fast custom op has no ONNX '
           'function; owner: mmvolo/deploy/onnx_export.py')
DEFORMABLE = ('DeformableOutlook', 'DCNv3Mixer')
REFERENCE_CASES = [pytest.param(m, marks=CLIP_BUG) if m in DEFORMABLE else m for m in MIXERS]
#: OutlookAttention is left out: export() forces it, so the tool's path is the reference one.
TOOL_CASES = [pytest.param(m, marks=TOOL_FORCES_OUTLOOK_ONLY)
              if m in ('Involution', 'LocalSelfAttention', *DEFORMABLE) else m
              for m in MIXERS if m != 'OutlookAttention']


class Backbone(torch.nn.Module):
    """The VOLO backbone, its tuple of four maps as four graph outputs."""

    def __init__(self, model: VOLO) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(images))


def tiny_backbone(mixer: str) -> Backbone:
    torch.manual_seed(0)
    model = VOLO(arch=TINY_ARCH, img_size=32, token_mixer=dict(type=mixer))
    model.init_weights()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.split('.')[-2:-1] in (['offset'], ['mask']):
                param.normal_(0, .3)
    return Backbone(model).eval()


def export_and_compare(mixer: str, force_reference: bool) -> float:
    """Export, run in onnxruntime, return the max abs difference to PyTorch."""
    module = tiny_backbone(mixer)
    images = torch.randn(1, 3, 32, 48)
    forcing = forced_impl('reference') if force_reference else contextlib.nullcontext()
    with forcing, contextlib.redirect_stdout(io.StringIO()):
        program = export(module, images, dynamic=False, opset=OPSET)
    proto = program.model_proto
    assert {node.domain for node in proto.graph.node} <= {'', 'ai.onnx'}
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=['CPUExecutionProvider'])
    actual = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        expected = module(images)
    assert [a.shape for a in actual] == [tuple(e.shape) for e in expected]
    assert min(float(e.abs().max()) for e in expected) > 100 * TOLERANCE
    return max(float(abs(a - e.numpy()).max()) for a, e in zip(actual, expected))


@pytest.mark.slow(seconds=10)
@pytest.mark.parametrize('mixer', REFERENCE_CASES)
def test_every_mixer_exports_through_the_reference_path(mixer):
    assert export_and_compare(mixer, force_reference=True) <= TOLERANCE


@pytest.mark.slow(seconds=10)
@pytest.mark.parametrize('mixer', TOOL_CASES)
def test_every_mixer_exports_as_the_tool_does(mixer):
    assert export_and_compare(mixer, force_reference=False) <= TOLERANCE
