"""ONNX export of a tiny VOLO backbone with each token mixer, checked in onnxruntime.

For every mixer (OutlookAttention, Involution, LocalSelfAttention, DWConvMixer,
DeformableOutlook, DCNv3Mixer) the backbone (TINY_ARCH, 32x48 input, offset/mask predictors
drawn away from zero so the deformable ones sample off the integer grid) is exported by
:func:`mmvolo.deploy.onnx_export.export` (the tool's exporter) and run in onnxruntime's CPU
provider; each of its four outputs must equal PyTorch's within 1e-4 (docs/deploy.md), and
the graph must use standard ONNX ops only.

export() forces every mmvolo op to its reference impl for the duration of the export (whatever
a module's ``impl=`` or the environment say), and the parity is against the PyTorch model as
configured (its fast paths), so each case also holds reference and fast path equal.
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

TOLERANCE = 1e-4
OPSET = 18
MIXERS = ['OutlookAttention', 'Involution', 'LocalSelfAttention', 'DWConvMixer',
          'DeformableOutlook', 'DCNv3Mixer']
DEFORMABLE = ('DeformableOutlook', 'DCNv3Mixer')


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


def export_and_compare(mixer: str) -> float:
    """Export as the tool does, run in onnxruntime, return the max abs difference to
    PyTorch (the model as configured: its fast paths)."""
    module = tiny_backbone(mixer)
    images = torch.randn(1, 3, 32, 48)
    with contextlib.redirect_stdout(io.StringIO()):
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
@pytest.mark.parametrize('mixer', MIXERS)
def test_every_mixer_exports_as_the_tool_does(mixer):
    assert export_and_compare(mixer) <= TOLERANCE


@pytest.mark.slow(seconds=10)
@pytest.mark.parametrize('mixer', DEFORMABLE)
def test_export_overrides_an_explicit_fast_impl(mixer, monkeypatch):
    """A mixer built with impl='fast' (and the op's variable naming it) still exports: the
    export forces the reference, and the parity then holds fast == reference."""
    monkeypatch.setenv('MMVOLO_LOCAL_AGGREGATE_IMPL', 'fast')
    torch.manual_seed(0)
    model = VOLO(arch=TINY_ARCH, img_size=32, token_mixer=dict(type=mixer, impl='fast'))
    model.init_weights()
    module = Backbone(model).eval()
    images = torch.randn(1, 3, 32, 48)
    with contextlib.redirect_stdout(io.StringIO()):
        program = export(module, images, dynamic=False, opset=OPSET)
    session = ort.InferenceSession(program.model_proto.SerializeToString(),
                                   providers=['CPUExecutionProvider'])
    actual = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        expected = module(images)
    assert max(float(abs(a - e.numpy()).max()) for a, e in zip(actual, expected)) <= TOLERANCE
