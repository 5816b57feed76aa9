"""Dynamic-size ONNX export (``export_onnx.py --dynamic-size``): one file, every image size.

Pins down:
* :func:`mmvolo.deploy.adaptive_pool.adaptive_avg_pool2d` equals PyTorch's
  ``F.adaptive_avg_pool2d`` (the oracle) at many sizes: odd, prime, square or not, smaller than
  the bin count, for UPerHead's scales (1, 2, 3, 6) and non-square bins; in float64 to
  rounding, in float32 within 1e-6; and exported on its own with dynamic H, W, onnxruntime
  gives PyTorch's pooling at sizes it was not traced at;
* :func:`~mmvolo.deploy.adaptive_pool.export_safe_pooling` swaps the PPM's pooling modules
  only inside the block and puts the very same modules back (also after an exception);
* a toy checkpoint exported through the CLI with ``--dynamic-size``: the graph's batch, H and
  W are symbolic, the metadata says so (version 2), and onnxruntime's logits equal the
  PyTorch model's (built apart, ``nn.AdaptiveAvgPool2d`` and all) within 1e-4 with
  identical label maps at 8 sizes (odd, prime, non-square, multiples of 16, ``pos_embed``'s
  own 64x64, smaller than one 32-pixel cell, batch 3).
"""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tool_helpers import TOY_CONFIG, run_tool_in_process

ort = pytest.importorskip('onnxruntime')
onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxscript')

from mmvolo.deploy.adaptive_pool import (  # noqa: E402
    SizeFollowingAvgPool2d,
    adaptive_avg_pool2d,
    export_safe_pooling,
    pooling_matrix,
)
from mmvolo.utils.config import build_model_for_analysis  # noqa: E402
from mmvolo_runtime.metadata import METADATA_VERSION, from_props  # noqa: E402

pytestmark = pytest.mark.filterwarnings('ignore:``build_loss`` would be deprecated')
TOOL = 'deploy/export_onnx.py'
SIDES = (1, 2, 3, 5, 6, 7, 11, 13, 16, 17, 23, 31, 37, 64, 97)
BINS = ((1, 1), (2, 2), (3, 3), (6, 6), (6, 2), (5, 7))
#: (batch, H, W) run through the one dynamic file: none is the traced 85x107
SIZES = ((1, 64, 80), (1, 37, 45), (1, 97, 61), (1, 64, 64), (1, 5, 7), (1, 31, 127),
         (1, 128, 96), (3, 29, 50))
TOLERANCE = 1e-4


# ------------------------------------------------------------------------------ the pooling
def test_pooling_equals_pytorch_at_every_size():
    generator = torch.Generator().manual_seed(0)
    worst64 = worst32 = 0.0
    for height, width in itertools.product(SIDES, SIDES[::2]):
        x = torch.randn(2, 3, height, width, dtype=torch.float64, generator=generator)
        for bins in BINS:
            expected = F.adaptive_avg_pool2d(x, bins)
            actual = adaptive_avg_pool2d(x, bins)
            assert actual.shape == expected.shape == (2, 3, *bins)
            worst64 = max(worst64, float((actual - expected).abs().max()))
            worst32 = max(worst32, float((adaptive_avg_pool2d(x.float(), bins)
                                          - expected).abs().max()))
    assert worst64 <= 1e-12 and worst32 <= 1e-6, (worst64, worst32)


def test_pooling_matrix_bins():
    """PyTorch's bins: rows floor(i * H / n) .. ceil((i + 1) * H / n), overlapping when
    H < n; each row averages (sums to 1)."""
    matrix = pooling_matrix(5, 3, torch.float64, torch.device('cpu'))
    third = 1 / 3
    expected = torch.tensor([[1 / 2, 1 / 2, 0, 0, 0], [0, third, third, third, 0],
                             [0, 0, 0, 1 / 2, 1 / 2]],
                            dtype=torch.float64)
    assert torch.equal(matrix, expected)
    small = pooling_matrix(2, 6, torch.float64, torch.device('cpu'))
    assert torch.equal(small, torch.tensor([[1, 0]] * 3 + [[0, 1]] * 3, dtype=torch.float64))
    with pytest.raises(ValueError, match='output_size=.*must be a positive int'):
        SizeFollowingAvgPool2d((None, 3))


def test_pooling_exported_alone_follows_the_runtime_size(tmp_path):
    class Pyramid(torch.nn.Module):
        def forward(self, x):
            return torch.cat([adaptive_avg_pool2d(x, (s, s)).flatten(2) for s in (1, 2, 3, 6)],
                             dim=2)

    from torch.export import Dim

    example = torch.randn(1, 4, 19, 26)
    program = torch.onnx.export(Pyramid().eval(), (example,), dynamo=True, opset_version=18,
                                input_names=['x'],
                                dynamic_shapes={'x': {2: Dim.DYNAMIC, 3: Dim.DYNAMIC}},
                                verbose=False)
    path = tmp_path / 'pool.onnx'
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for height, width in ((1, 1), (2, 5), (7, 3), (13, 29), (64, 41), (6, 6)):
        x = torch.randn(1, 4, height, width)
        expected = torch.cat([F.adaptive_avg_pool2d(x, s).flatten(2) for s in (1, 2, 3, 6)], 2)
        (actual,) = session.run(None, {'x': x.numpy()})
        assert abs(actual - expected.numpy()).max() <= 1e-6, (height, width)


def test_swap_is_scoped_to_the_block():
    model = build_model_for_analysis(str(TOY_CONFIG), outlook_impl=None).eval()
    originals = [m for m in model.modules() if isinstance(m, torch.nn.AdaptiveAvgPool2d)]
    assert [m.output_size for m in originals] == [1, 2, 3, 6]  # UPerHead's PPM
    with export_safe_pooling(model) as count:
        assert count == 4
        swapped = [m for m in model.modules() if isinstance(m, SizeFollowingAvgPool2d)]
        assert [m.output_size for m in swapped] == [(1, 1), (2, 2), (3, 3), (6, 6)]
        assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in model.modules())
    with pytest.raises(RuntimeError, match='inside'):
        with export_safe_pooling(model):
            raise RuntimeError('inside')
    after = [m for m in model.modules() if isinstance(m, torch.nn.AdaptiveAvgPool2d)]
    assert all(a is b for a, b in zip(after, originals)) and len(after) == 4
    assert not any(isinstance(m, SizeFollowingAvgPool2d) for m in model.modules())


# ------------------------------------------------------------------------------ the export
@pytest.fixture(scope='module')
def dynamic_export(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A toy checkpoint (weights perturbed) exported with --dynamic-size, and its model."""
    torch.manual_seed(5)
    model = build_model_for_analysis(str(TOY_CONFIG), outlook_impl=None).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    root = tmp_path_factory.mktemp('onnx_dynamic')
    checkpoint, out = root / 'toy.pth', root / 'toy_dynamic.onnx'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, checkpoint)

    class _Capsys:
        def readouterr(self):
            return type('Out', (), {'out': '', 'err': ''})()

    result = run_tool_in_process(TOOL, TOY_CONFIG, checkpoint, '--out', out, '--dynamic-size',
                                 capsys=_Capsys())
    assert result.returncode == 0, result.stdout + result.stderr
    return out, model


def pytorch_logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.decode_head.forward(model.extract_feat(images))
        return F.interpolate(out, size=images.shape[2:], mode='bilinear', align_corners=False)


@pytest.mark.slow(seconds=30)
def test_one_file_serves_every_size(dynamic_export):
    path, model = dynamic_export
    graph = onnx.load(str(path)).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [bool(dim.dim_param) for dim in dims] == [True, False, True, True]
    assert {node.domain for node in graph.node} <= {'', 'ai.onnx'}
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    props = session.get_modelmeta().custom_metadata_map
    info = from_props(props, path.name)
    assert info.dynamic_size and info.dynamic_batch and info.version == METADATA_VERSION == 2
    assert info.outlook_impl == 'reference' and info.opset == 18 and info.mmvolo_version
    generator = torch.Generator().manual_seed(1)
    for batch, height, width in SIZES:
        images = torch.randn(batch, 3, height, width, generator=generator)
        expected = pytorch_logits(model, images).numpy()
        (actual,) = session.run(None, {'images': images.numpy()})
        assert actual.shape == expected.shape == (batch, 6, height, width)
        diff = float(abs(actual - expected).max())
        print(f'{batch}x{height}x{width}: max abs diff {diff:.2e}')
        assert diff <= TOLERANCE, (height, width, diff)
        assert (actual.argmax(1) == expected.argmax(1)).all(), (height, width)
        assert abs(expected).max() > 100 * TOLERANCE


def test_trace_and_check_sizes_take_both_branches():
    """Traced where VOLO pads and resizes pos_embed (the general branches); checked also at
    pos_embed's own size (no padding, no resize) and at the --shape."""
    from mmvolo.deploy.onnx_export import dynamic_check_sizes, dynamic_trace_size

    model = build_model_for_analysis(str(TOY_CONFIG), outlook_impl=None)
    grid = tuple(model.backbone.pos_embed.shape[1:3])
    trace = dynamic_trace_size(model, (64, 64))
    assert trace == (85, 107) and grid == (4, 4)
    assert all(side % 16 for side in trace)
    assert all(-(-side // 16) != g for side, g in zip(trace, grid))
    sizes = dynamic_check_sizes(model, (64, 80))
    assert sizes == [(1, 64, 80), (2, 85, 107), (1, 64, 64), (1, 35, 31)]
    assert dynamic_check_sizes(model, (64, 64))[1:] == [(2, 85, 107), (1, 35, 26)]


def test_a_specialised_input_is_refused():
    """torch.onnx may fall back to a draft export that fixes a size: one line, exit 1."""
    from types import SimpleNamespace

    from mmvolo.cli import UsageError
    from mmvolo.deploy.onnx_export import check_dynamic_input

    fixed = SimpleNamespace(graph=SimpleNamespace(inputs=[SimpleNamespace(
        shape=('batch', 3, 64, 'width'))]))
    with pytest.raises(UsageError, match=r'fixed dimension\(s\) H of the input .*export '
                                         'without --dynamic-size') as error:
        check_dynamic_input(fixed)
    assert error.value.exit_code == 1
    check_dynamic_input(SimpleNamespace(graph=SimpleNamespace(inputs=[SimpleNamespace(
        shape=('batch', 3, 'height', 'width'))])))
