"""ONNX export (``tools/deploy/export_onnx.py``): the graph onnxruntime runs is the model.

Pins down:
* the toy segmentor exported at an odd size (64x80) with a checkpoint, through the CLI's
  ``__main__`` (in this process: a fresh interpreter would pay ~8 s of imports): exit 0,
  the tool's parity line <= 1e-4, and the file's own logits (run here in onnxruntime)
  equal PyTorch's with the checkpoint's weights (so they were loaded), shape
  (1, num_classes, 64, 80), the data_preprocessor recorded in the metadata;
* ``--dynamic`` with the chunked impl configured for PyTorch: the file runs at batch 3 (not
  a traced size) within 1e-4 of the chunked PyTorch model; H and W stay fixed, and another
  size is refused by onnxruntime (it does not run and silently give wrong logits);
* :func:`mmvolo.ops.forced_impl` makes every outlook-attention call run the reference impl
  (above modules' ``impl=`` and $MMVOLO_OUTLOOK_IMPL, touching neither); under it a module
  configured as 'chunked' (a custom op ONNX cannot express) exports as Col2Im;
* bad input: one line ``error: ...`` each, exit 2 (1: unusable checkpoint, parity beyond
  ``--tolerance``), and nothing written (an existing output is kept, no temporary file left).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from tool_helpers import TOY_CONFIG, run_tool_in_process, single_line_error

ort = pytest.importorskip('onnxruntime')
onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxscript')

from mmvolo.models.outlook_attention import OutlookAttention  # noqa: E402
from mmvolo.ops import IMPL_ENV_VAR, OUTLOOK_IMPLS, forced_impl  # noqa: E402
from mmvolo.ops.impl_override import forced_outlook_impl  # noqa: E402
from mmvolo.ops.involution import INVOLUTION_IMPLS  # noqa: E402
from mmvolo.ops.outlook import select_impl  # noqa: E402
from mmvolo.utils.config import build_model_for_analysis  # noqa: E402

# mmseg's own deprecation, raised when the in-process runs build the decode head's loss
pytestmark = pytest.mark.filterwarnings('ignore:``build_loss`` would be deprecated')
TOOL = 'deploy/export_onnx.py'
NUM_CLASSES = 6  # the toy config's
TOLERANCE = 1e-4


def logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the exported graph computes: decode-head logits resized to the input size."""
    with torch.no_grad():
        out = model.decode_head.forward(model.extract_feat(images))
        return torch.nn.functional.interpolate(out, size=images.shape[2:], mode='bilinear',
                                               align_corners=False)


def run_onnx(path: Path, images: torch.Tensor):
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith('.tmp.onnx'))


@pytest.fixture(scope='module')
def toy_checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A toy segmentor checkpoint with non-default weights, and the model holding them."""
    torch.manual_seed(3)
    model = build_model_for_analysis(str(TOY_CONFIG), outlook_impl=None)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    path = tmp_path_factory.mktemp('onnx') / 'toy.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path, model


@pytest.mark.slow(seconds=8)
def test_cli_export_at_odd_size_matches_pytorch(tmp_path, capsys, monkeypatch, toy_checkpoint):
    checkpoint, model = toy_checkpoint
    out = tmp_path / 'toy.onnx'
    monkeypatch.chdir(tmp_path)
    result = run_tool_in_process(TOOL, TOY_CONFIG, checkpoint, '--out', out, '--shape', 64, 80,
                                 capsys=capsys)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if 'max abs diff' in line)
    assert float(line.split('max abs diff ')[1].split()[0]) <= TOLERANCE
    assert "'reference' in the graph" in result.stdout
    images = torch.randn(1, 3, 64, 80)
    actual = run_onnx(out, images)
    assert actual.shape == (1, NUM_CLASSES, 64, 80)
    expected = logits(model, images).numpy()
    assert abs(actual - expected).max() <= TOLERANCE
    assert abs(expected).max() > 100 * TOLERANCE  # the comparison is not of near-zeros
    meta = {prop.key: prop.value for prop in onnx.load(str(out)).metadata_props}
    assert meta['preprocess_mean'] == '[123.675, 116.28, 103.53]'
    assert meta['num_classes'] == str(NUM_CLASSES) and meta['outlook_impl'] == 'reference'
    assert leftovers(tmp_path) == []


def test_dynamic_batch_with_chunked_pytorch(tmp_path, capsys, toy_checkpoint):
    checkpoint, model = toy_checkpoint
    out = tmp_path / 'dynamic.onnx'
    result = run_tool_in_process(TOOL, TOY_CONFIG, checkpoint, '--out', out, '--shape', 48, 40,
                                 '--dynamic', '--cfg-options',
                                 'model.backbone.outlook_impl=chunked', capsys=capsys)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(PyTorch here: 'chunked')" in result.stdout
    graph = onnx.load(str(out)).graph
    assert 'Col2Im' in {node.op_type for node in graph.node}
    assert {node.domain for node in graph.node} <= {'', 'ai.onnx'}
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [dim.dim_value for dim in dims[1:]] == [3, 48, 40]
    chunked = [module for module in model.modules() if isinstance(module, OutlookAttention)]
    for module in chunked:
        module.impl = 'chunked'
    images = torch.randn(3, 3, 48, 40)  # batch 3: neither traced (2) nor checked by the tool
    actual = run_onnx(out, images)
    assert actual.shape == (3, NUM_CLASSES, 48, 40)
    assert abs(actual - logits(model, images).numpy()).max() <= TOLERANCE
    with pytest.raises(Exception, match='(?i)invalid dimensions'):  # H, W are fixed
        run_onnx(out, torch.randn(1, 3, 64, 40))


def test_forced_impl_beats_modules_and_env_and_restores(monkeypatch):
    """The export's override is read by the dispatcher: it beats a module's ``impl=`` and the
    env var, touches neither, and ends with the block."""
    monkeypatch.setenv(IMPL_ENV_VAR, 'chunked')
    v, logits = torch.randn(1, 4, 4, 8), torch.randn(1, 2, 2, 2 * 81)
    with forced_impl('reference', ops=(OUTLOOK_IMPLS.op,)):
        assert select_impl(v, 'chunked', logits) == 'reference'
        assert select_impl(v, None, logits) == 'reference'
        assert os.environ[IMPL_ENV_VAR] == 'chunked'
        assert INVOLUTION_IMPLS.select(v, v, impl='fast') == 'fast'  # other ops: their own
    assert select_impl(v, 'chunked', logits) == 'chunked'
    with pytest.raises(ValueError, match="impl 'nope' is not available here; choose one of"):
        with forced_impl('nope'):
            pass
    with pytest.warns(DeprecationWarning, match='forced_impl'):
        with forced_outlook_impl(torch.nn.Identity(), 'reference'):
            assert select_impl(v, 'chunked', logits) == 'reference'


def test_chunked_module_exports_through_reference():
    """A 'chunked' module exports (as Col2Im) under the override; results equal chunked's."""
    module = OutlookAttention(8, 2, impl='chunked').eval()
    tokens = torch.randn(1, 6, 10, 8)
    with forced_impl('reference', ops=(OUTLOOK_IMPLS.op,)), torch.no_grad():
        program = torch.onnx.export(module, (tokens,), dynamo=True, opset_version=18,
                                    verbose=False)
    assert module.impl == 'chunked'
    ops = {node.op_type for node in program.model_proto.graph.node}
    assert 'Col2Im' in ops
    with torch.no_grad():
        expected = module(tokens).numpy()
    assert abs(program(tokens)[0].numpy() - expected).max() <= 1e-5


# ------------------------------------------------------------------------------ bad input
@pytest.fixture(scope='module')
def bad_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp('onnx_bad')
    files = {'root': root, 'text_ckpt': root / 'notes.pth', 'existing': root / 'kept.onnx'}
    files['text_ckpt'].write_text('not a checkpoint\n')
    files['existing'].write_bytes(b'old')
    return files


@pytest.mark.parametrize('case', [
    'missing_config', 'bad_checkpoint', 'shape', 'out_is_checkpoint', 'out_folder',
    'opset', 'suffix', 'no_onnxruntime'])
def test_bad_input_is_one_line(case, bad_files, capsys):
    root = bad_files['root']
    out = root / 'model.onnx'
    args = {
        'missing_config': (root / 'nope.py', '--out', out),
        'bad_checkpoint': (TOY_CONFIG, bad_files['text_ckpt'], '--out', out),
        'shape': (TOY_CONFIG, '--out', out, '--shape', 0, 80),
        'out_is_checkpoint': (TOY_CONFIG, bad_files['text_ckpt'], '--out',
                              bad_files['text_ckpt']),
        'out_folder': (TOY_CONFIG, '--out', root / 'missing' / 'model.onnx'),
        'opset': (TOY_CONFIG, '--out', out, '--opset', 17),
        'suffix': (TOY_CONFIG, '--out', root / 'model.pth'),
        'no_onnxruntime': (TOY_CONFIG, '--out', out),
    }[case]
    expected = {
        'missing_config': (2, 'nope.py not found'),
        'bad_checkpoint': (1, 'is not a checkpoint'),
        'shape': (2, '--shape must be two positive sizes'),
        'out_is_checkpoint': (2, 'is the input file'),
        'out_folder': (2, 'does not exist; create it first'),
        'opset': (2, 'needs opset >= 18'),
        'suffix': (2, 'name a .onnx file'),
        'no_onnxruntime': (2, "pip install -e '.[deploy]'"),
    }[case]
    blocked = {'onnxruntime': None} if case == 'no_onnxruntime' else {}
    with mock.patch.dict(sys.modules, blocked):
        result = run_tool_in_process(TOOL, *args, capsys=capsys)
    assert result.returncode == expected[0], result.stdout + result.stderr
    assert expected[1] in single_line_error(result)
    assert not out.exists() and leftovers(root) == []


def test_parity_beyond_tolerance_writes_nothing(bad_files, capsys):
    existing = bad_files['existing']
    result = run_tool_in_process(TOOL, TOY_CONFIG, '--out', existing, '--shape', 32, 32,
                                 '--tolerance', 1e-12, capsys=capsys)
    assert result.returncode == 1, result.stdout + result.stderr
    line = single_line_error(result)
    assert 'differs from PyTorch by' in line and 'nothing written' in line
    assert existing.read_bytes() == b'old' and leftovers(bad_files['root']) == []
