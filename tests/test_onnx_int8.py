"""int8 quantization of an mmvolo ONNX export (``tools/deploy/quantize_onnx.py``,
:mod:`mmvolo_runtime.quantize`).

Pins down, with a toy checkpoint trained here (2 iterations) and exported in slide mode
(24x24 windows, ``--dynamic``) and whole mode (the config pads to 64x64):
* calibration sees what inference sees: the reader's batches are, in whole mode, mmseg's own
  test pipeline + data_preprocessor output for each image (the independent oracle), in slide
  mode one 24x24 input per window of mmseg's grid;
* the int8 file: QDQ nodes, int8 kernels in onnxruntime, the fp32 file's metadata plus
  ``mmvolo_quantization``, loadable by ``OnnxSegmentor``; the agreement it reports is the one
  recomputed here from the two files' label maps; mIoU of both reported with labels;
* refusal: an ``--min-agreement`` no file can meet exits 1 with one line, nothing written;
* bad input one line, exit 2, nothing written: an empty calibration folder, ``--num`` beyond
  the images there, a non-ONNX model, held-out images that are calibration images, a file
  without mmvolo metadata.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from tool_helpers import (
    REPO,
    make_tiny_data,
    run_tool,
    run_tool_in_process,
    single_line_error,
    write_tiny_config,
)

ort = pytest.importorskip('onnxruntime')
onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxscript')
cv2 = pytest.importorskip('cv2')

from mmvolo_runtime import OnnxSegmentor  # noqa: E402
from mmvolo_runtime.quantize import QUANT_KEY, PipelineCalibrationReader  # noqa: E402
from mmvolo_runtime.windows import slide_windows  # noqa: E402

pytestmark = pytest.mark.filterwarnings('ignore:``build_loss`` would be deprecated')
EXPORT, QUANTIZE = 'deploy/export_onnx.py', 'deploy/quantize_onnx.py'


@pytest.fixture(scope='module')
def toy(tmp_path_factory) -> dict:
    """A toy checkpoint (2 iterations) exported in slide and whole mode; its images."""
    root = tmp_path_factory.mktemp('onnx_int8')
    data = make_tiny_data(root / 'toy', num_train=6, num_val=4, size=32)
    config = write_tiny_config(root / 'tiny.py', data, 2, 2)
    result = run_tool('train.py', config, '--work-dir', root / 'run', cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = root / 'run' / 'iter_2.pth'
    slide = root / 'slide.py'
    slide.write_text(f'_base_ = [{str(config)!r}]\n'
                     "model = dict(test_cfg=dict(mode='slide', crop_size=(24, 24), "
                     'stride=(16, 16)))\n')
    whole = root / 'whole.py'
    whole.write_text(f'_base_ = [{str(config)!r}]\n'
                     'model = dict(data_preprocessor=dict(test_cfg=dict(size=(64, 64))))\n')
    models = {}
    for name, cfg, args in (('slide', slide, ('--dynamic',)), ('whole', whole,
                                                               ('--shape', 64, 64))):
        out = root / f'{name}.onnx'
        result = run_tool(EXPORT, cfg, checkpoint, '--out', out, *args, cwd=REPO)
        assert result.returncode == 0, result.stdout + result.stderr
        models[name] = out
    return dict(root=root, data=data, whole_config=whole, checkpoint=checkpoint,
                train=data / 'images' / 'training', val=data / 'images' / 'validation',
                labels=data / 'annotations' / 'validation', **models)


def test_calibration_inputs_are_mmsegs_preprocessing(toy):
    """Whole mode: each batch is mmseg's test pipeline + data_preprocessor of the image."""
    from mmengine.config import Config
    from mmengine.dataset import Compose

    from mmvolo import runtime  # noqa: F401 - the stack fixes, before mmseg
    from mmvolo.utils.config import build_model_for_analysis

    images = sorted(toy['train'].glob('*.jpg'))[:3]
    reader = PipelineCalibrationReader(str(toy['whole']), [str(path) for path in images])
    assert len(reader) == 3 and reader.images == 3
    cfg = Config.fromfile(str(toy['whole_config']))
    model = build_model_for_analysis(cfg, outlook_impl=None)
    pipeline = Compose([step for step in cfg.test_pipeline if step['type'] != 'LoadAnnotations'])
    for path in images:
        data = pipeline(dict(img_path=str(path)))
        batch = model.data_preprocessor(dict(inputs=[data['inputs']],
                                             data_samples=[data['data_samples']]), False)
        expected = batch['inputs'].numpy()
        actual = reader.get_next()['images']
        assert actual.shape == expected.shape == (1, 3, 64, 64)
        assert abs(actual - expected).max() <= 1e-5
    assert reader.get_next() is None


def test_slide_calibration_gets_every_window(toy):
    images = sorted(toy['train'].glob('*.jpg'))[:2]
    odd = toy['root'] / 'odd_37x45.png'
    cv2.imwrite(str(odd), cv2.resize(cv2.imread(str(images[0])), (45, 37)))
    reader = PipelineCalibrationReader(str(toy['slide']), [str(images[0]), str(odd)])
    # 32x32 -> 64x64 (keep-ratio Resize to 64): 4x4... grid; 37x45 -> 53x64
    expected = len(slide_windows(64, 64, (24, 24), (16, 16))) \
        + len(slide_windows(53, 64, (24, 24), (16, 16)))
    assert len(reader) == expected == 16 + 12
    shapes = {batch.shape for batch in reader.batches}
    assert shapes == {(1, 3, 24, 24)}
    reader.set_range(3, 5)
    assert np.array_equal(reader.get_next()['images'], reader.batches[3])


@pytest.mark.slow(seconds=30)
def test_int8_file_agrees_and_loads(toy, tmp_path, capsys):
    out = tmp_path / 'int8.onnx'
    result = run_tool_in_process(QUANTIZE, toy['slide'], '--calibrate', toy['train'],
                                 '--num', 4, '--holdout', toy['val'], '--labels', toy['labels'],
                                 '--out', out, '--threads', 1, capsys=capsys)
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout)
    printed = float(re.search(r'int8 vs fp32: ([\d.]+) %', result.stdout).group(1))
    assert re.search(r'mIoU: fp32 [\d.]+, int8 [\d.]+ \(change [+-][\d.]+\)', result.stdout)
    assert 'onnxruntime int8 kernels: QLinear' in result.stdout
    assert 'Col2Im' in result.stdout.split('onnxruntime fp32 kernels:')[1].splitlines()[0]
    model = onnx.load(str(out))
    ops = {node.op_type for node in model.graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear'} <= ops
    weights = [init for init in model.graph.initializer if init.data_type == onnx.TensorProto.INT8]
    assert weights, 'no int8 weights in the file'
    fp32_props = {prop.key: prop.value for prop in onnx.load(str(toy['slide'])).metadata_props}
    props = {prop.key: prop.value for prop in model.metadata_props}
    record = json.loads(props.pop(QUANT_KEY))
    assert props == fp32_props
    assert record['format'] == 'QDQ' and record['calibration_images'] == 4
    assert record['holdout_images'] == 4 and record['holdout_miou_int8'] is not None
    # the reported agreement, recomputed from the two files
    int8 = OnnxSegmentor(str(out), threads=1)
    fp32 = OnnxSegmentor(str(toy['slide']), threads=1)
    assert int8.info == fp32.info and int8.dynamic_batch
    equal = total = 0
    for path in sorted(toy['val'].glob('*.jpg')):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        labels, logits = int8.predict(image)
        ref, ref_logits = fp32.predict(image)
        assert labels.shape == image.shape[:2] and logits.shape == ref_logits.shape
        equal += int((labels == ref).sum())
        total += labels.size
        assert abs(logits - ref_logits).max() > 0  # it is not the fp32 graph
    assert record['holdout_pixels'] == total
    assert record['holdout_agreement'] == pytest.approx(equal / total)
    assert printed == pytest.approx(100 * equal / total, abs=1e-3)
    assert equal / total >= 0.9
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # no temporary left


def test_refusal_writes_nothing(toy, tmp_path, capsys):
    out = tmp_path / 'int8.onnx'
    result = run_tool_in_process(QUANTIZE, toy['whole'], '--calibrate', toy['train'],
                                 '--num', 2, '--out', out, '--min-agreement', 1.5,
                                 capsys=capsys)
    assert result.returncode == 1, result.stdout + result.stderr
    line = single_line_error(result)
    assert '< --min-agreement 150 %; nothing written' in line
    assert 'int8 vs fp32:' in result.stdout  # held out: the 4 training images after the 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('case', ['empty_dir', 'num_too_large', 'not_onnx', 'overlap',
                                  'no_metadata', 'no_holdout', 'labels_missing'])
def test_bad_input_is_one_line(case, toy, tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'notes.onnx').write_text('not a model\n')
    plain = tmp_path / 'plain.onnx'
    model = onnx.load(str(toy['whole']))
    del model.metadata_props[:]
    onnx.save(model, str(plain))
    out = tmp_path / 'out' / 'int8.onnx'
    out.parent.mkdir()
    base = ('--out', out)
    args, message = {
        'empty_dir': ((toy['whole'], '--calibrate', tmp_path / 'empty', '--num', 1),
                      'no images in'),
        'num_too_large': ((toy['whole'], '--calibrate', toy['train'], '--num', 50),
                          'holds 6 images; pass --num 6 or fewer'),
        'not_onnx': ((tmp_path / 'notes.onnx', '--calibrate', toy['train'], '--num', 2),
                     'cannot load'),
        'overlap': ((toy['whole'], '--calibrate', toy['train'], '--num', 2, '--holdout',
                     toy['train']), 'is also a calibration image'),
        'no_metadata': ((plain, '--calibrate', toy['train'], '--num', 2),
                        'holds no mmvolo metadata'),
        'no_holdout': ((toy['whole'], '--calibrate', toy['train'], '--num', 6),
                       'no held-out images'),
        'labels_missing': ((toy['whole'], '--calibrate', toy['train'], '--num', 4,
                            '--labels', tmp_path / 'empty'), 'no label map'),
    }[case]
    result = run_tool_in_process(QUANTIZE, *args, *base, capsys=capsys)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in single_line_error(result)
    assert list(out.parent.iterdir()) == []


def test_tool_is_torch_free():
    """The quantizer runs without torch: import it in a fresh interpreter."""
    import subprocess
    import sys

    code = ('import sys, mmvolo_runtime.quantize; '
            'print(sorted({m.split(".")[0] for m in sys.modules} & '
            "{'torch', 'mmseg', 'mmengine', 'mmcv', 'mmvolo'}))")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            cwd='/', timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'
