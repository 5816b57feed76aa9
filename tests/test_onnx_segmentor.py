"""The ONNX runtime (``mmvolo_runtime``, ``tools/deploy/infer_onnx.py``) reproduces mmseg.

Pins down:
* the pieces against their originals: the keep-ratio size (mmcv's ``rescale_size``), the
  logits resize (PyTorch's ``F.interpolate``, both ``align_corners``), the window grid
  (mmseg's, as :func:`mmvolo.models.segmentors.batched_slide.slide_windows` holds it), the
  overlay (mmseg's ``SegLocalVisualizer``, class names included), the metadata round trip;
* end to end, with a toy checkpoint trained here (2 iterations): label maps and logits of
  :class:`OnnxSegmentor` against ``mmseg.apis.inference_model`` (what tools/inference.py runs)
  on the toy validation images and odd sizes, in whole mode (the config pads to the exported
  size) and in slide mode (24x24 windows, stride 16, overhanging the border, batched by a
  ``--dynamic`` export): >= 99.9 % of pixels equal, logits within 1e-4;
* one ``--dynamic-size`` file (the config without test padding, so mmseg runs every image at
  its own resized size) in whole mode and, with the slide ``test_cfg`` written into a copy's
  metadata, in slide mode: every image exact (64x19 too: its windows run clipped, as mmseg
  runs them), same thresholds; a version-1 file (no ``dynamic_size`` key) still reads, a
  newer version is refused in one line;
* the CLI: label maps equal to the API's, overlays written; bad input one line each, exit 2,
  nothing written (non-image, corrupt image, file without mmvolo metadata, older export,
  newer metadata version, image too large for a whole-mode file, duplicate stems, out-dir
  holding an input);
* the import footprint: ``import mmvolo_runtime`` (and its CLI) loads none of torch, mmseg,
  mmengine, mmcv, mmvolo (a fresh interpreter).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
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
from mmvolo_runtime.interpolate import resize_bilinear  # noqa: E402
from mmvolo_runtime.metadata import METADATA_VERSION, from_props  # noqa: E402
from mmvolo_runtime.paint import paint_overlay  # noqa: E402
from mmvolo_runtime.preprocess import rescale_size  # noqa: E402
from mmvolo_runtime.windows import slide_windows  # noqa: E402

pytestmark = pytest.mark.filterwarnings('ignore:``build_loss`` would be deprecated')
EXPORT, INFER = 'deploy/export_onnx.py', 'deploy/infer_onnx.py'
#: (H, W) of the extra test images: odd, elongated, tiny (resized to 64 on the long side).
ODD_SIZES = ((37, 45), (29, 50), (64, 19), (5, 7), (33, 33))
PIXELS_EQUAL, LOGIT_TOLERANCE = 0.999, 1e-4


# ------------------------------------------------------------------------------ the pieces
def test_rescale_size_is_mmcvs():
    import mmcv

    for height in (1, 5, 29, 37, 64, 97, 511, 1024):
        for width in (1, 7, 45, 64, 683, 2048):
            for scale in ((64, 64), (2048, 512), (2048, 1024)):
                new_w, new_h = mmcv.rescale_size((width, height), scale)
                assert rescale_size(height, width, scale) == (new_h, new_w)


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('size', [(53, 64), (7, 5), (64, 64), (1, 3), (128, 200)])
def test_resize_bilinear_is_torch_interpolate(size, align_corners):
    data = torch.randn(6, 64, 48, generator=torch.Generator().manual_seed(1))
    expected = torch.nn.functional.interpolate(data[None], size=size, mode='bilinear',
                                               align_corners=align_corners)[0].numpy()
    actual = resize_bilinear(data.numpy(), *size, align_corners)
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    assert abs(actual - expected).max() <= 1e-5


def test_slide_windows_are_mmsegs():
    from mmvolo.models.segmentors.batched_slide import slide_windows as mmvolo_windows

    for shape in ((53, 64), (24, 24), (10, 70), (512, 683), (1024, 2048)):
        for crop, stride in (((24, 24), (16, 16)), ((512, 1024), (341, 682)), ((8, 8), (8, 8))):
            assert slide_windows(*shape, crop, stride) == list(mmvolo_windows(shape, crop,
                                                                              stride))


@pytest.mark.parametrize('size', [(40, 52), (130, 140)])  # without / with class names
def test_overlay_is_seg_local_visualizers(size):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    from mmseg.visualization import SegLocalVisualizer

    from mmvolo.datasets.toy_generator import TOY_CLASSES, TOY_PALETTE

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    labels = np.zeros(size, np.uint8)
    labels[size[0] // 3:, :size[1] // 2] = 2
    labels[:size[0] // 2, size[1] // 3:] = 5
    labels[-5:, -5:] = 9  # no such class: mmseg leaves it unpainted
    sample = SegDataSample(pred_sem_seg=PixelData(data=torch.from_numpy(labels)[None].long()))
    visualizer = SegLocalVisualizer(name=f'overlay_test_{size[0]}', alpha=0.4)
    visualizer.dataset_meta = dict(classes=TOY_CLASSES, palette=[list(c) for c in TOY_PALETTE])
    with_labels = min(size) >= 128
    visualizer.add_datasample('x', image, sample, draw_gt=False, show=False,
                              with_labels=with_labels)
    expected = visualizer.get_image()
    actual = paint_overlay(image, labels, TOY_CLASSES, TOY_PALETTE, 0.4)
    assert np.array_equal(actual, expected)


def test_export_records_what_the_runtime_cannot_reproduce():
    from mmvolo.deploy.onnx_export import test_resize

    resize, why = test_resize([dict(type='LoadImageFromFile'),
                               dict(type='Resize', scale=(2048, 512), keep_ratio=True),
                               dict(type='LoadAnnotations'), dict(type='PackSegInputs')])
    assert why is None and resize.scale == (2048, 512) and resize.keep_ratio
    _, why = test_resize([dict(type='LoadImageFromFile'), dict(type='RandomFlip', prob=1.0),
                          dict(type='PackSegInputs')])
    assert 'RandomFlip' in why
    assert test_resize(None)[1] == 'the config has no test_pipeline'


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope='module')
def toy(tmp_path_factory) -> dict:
    """A toy checkpoint (2 iterations), its config in whole and slide variants, the images."""
    root = tmp_path_factory.mktemp('onnx_runtime')
    data = make_tiny_data(root / 'toy', num_train=4, num_val=4, size=32)
    config = write_tiny_config(root / 'tiny.py', data, 2, 2)
    result = run_tool('train.py', config, '--work-dir', root / 'run', cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    whole = root / 'whole.py'  # mmseg pads the test image to the exported size too
    whole.write_text(f'_base_ = [{str(config)!r}]\n'
                     'model = dict(data_preprocessor=dict(test_cfg=dict(size=(64, 64))))\n')
    slide = root / 'slide.py'
    slide.write_text(f'_base_ = [{str(config)!r}]\n'
                     "model = dict(test_cfg=dict(mode='slide', crop_size=(24, 24), "
                     'stride=(16, 16)))\n')
    images = root / 'images'
    images.mkdir()
    val = sorted((data / 'images' / 'validation').glob('*.jpg'))
    paths = [images / path.name for path in val]
    for src, dst in zip(val, paths):
        dst.write_bytes(src.read_bytes())
    big = cv2.resize(cv2.imread(str(val[0])), (120, 80))
    for index, (height, width) in enumerate(ODD_SIZES):
        path = images / f'odd_{height}x{width}.png'
        cv2.imwrite(str(path), big[index:index + height, 2 * index:2 * index + width])
        paths.append(path)
    return dict(root=root, config=config, whole=whole, slide=slide, images=images,
                paths=paths, checkpoint=root / 'run' / 'iter_2.pth')


def export(toy: dict, config: Path, out: Path, *args, capsys, checkpoint=True) -> Path:
    ckpt = (toy['checkpoint'],) if checkpoint else ()
    result = run_tool_in_process(EXPORT, config, *ckpt, '--out', out, *args, capsys=capsys)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope='module')
def exports(toy) -> dict:
    """whole (64x64, fixed batch), slide (24x24 crop by default, --dynamic), small (whole,
    32x32 random weights: too small for the resized images), dynamic (whole, --dynamic-size,
    no test padding) and dynamic_slide (that file with the slide test_cfg in its metadata)."""
    capsys = _NullCapsys()
    root = toy['root']
    files = dict(
        whole=export(toy, toy['whole'], root / 'whole.onnx', '--shape', 64, 64, capsys=capsys),
        slide=export(toy, toy['slide'], root / 'slide.onnx', '--dynamic', capsys=capsys),
        small=export(toy, toy['config'], root / 'small.onnx', '--shape', 32, 32,
                     capsys=capsys, checkpoint=False),
        dynamic=export(toy, toy['config'], root / 'dynamic.onnx', '--dynamic-size',
                       capsys=capsys))
    files['dynamic_slide'] = edited_copy(files['dynamic'], root / 'dynamic_slide.onnx',
                                         lambda props: props.update(test_cfg=json.dumps(dict(
                                             mode='slide', crop_size=[24, 24],
                                             stride=[16, 16]))))
    return files


def edited_copy(source: Path, target: Path, change) -> Path:
    """A copy of the export ``source`` whose metadata_props went through ``change(props)``."""
    model = onnx.load(str(source))
    props = {prop.key: prop.value for prop in model.metadata_props}
    change(props)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(target))
    return target


class _NullCapsys:
    """A stand-in for pytest's capsys in module fixtures (the tool's output is returned)."""

    def readouterr(self):
        return _Out()


class _Out:
    out = err = ''


def mmseg_predictions(config: Path, checkpoint: Path, paths: list) -> list:
    """(labels (H, W), logits (C, H, W)) of mmseg's inference_model, as tools/inference.py."""
    from mmengine.model import revert_sync_batchnorm
    from mmseg.apis import inference_model, init_model

    model = revert_sync_batchnorm(init_model(str(config), str(checkpoint), device='cpu'))
    results = []
    for path in paths:
        result = inference_model(model, str(path))
        results.append((result.pred_sem_seg.data[0].numpy(), result.seg_logits.data.numpy()))
    return results


@pytest.mark.slow(seconds=20)  # the first one also trains and exports (~20 s)
@pytest.mark.parametrize('mode', ['whole', 'slide'])
def test_predictions_equal_mmsegs(mode, toy, exports):
    segmentor = OnnxSegmentor(str(exports[mode]), threads=1)
    info = segmentor.info
    assert info.mode == mode and segmentor.dynamic_batch == (mode == 'slide')
    assert segmentor.input_size == ((64, 64) if mode == 'whole' else (24, 24))
    expected = mmseg_predictions(toy[mode], toy['checkpoint'], toy['paths'])
    equal = total = 0
    worst = 0.0
    for path, (labels_ref, logits_ref) in zip(toy['paths'], expected):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        labels, logits = segmentor.predict(image)
        assert labels.shape == image.shape[:2] and labels.dtype == np.uint8
        assert logits.shape == logits_ref.shape == (6, *image.shape[:2])
        exact = segmentor.plan(*image.shape[:2]).exact
        # slide: 64x19 stays narrower than a 24x24 window; mmseg runs a 24x19 window there,
        # this fixed-size file a padded one (documented), so that image is not compared
        assert exact == (mode == 'whole' or path.stem != 'odd_64x19'), path
        if not exact:
            continue
        equal += int((labels == labels_ref).sum())
        total += labels.size
        worst = max(worst, float(abs(logits - logits_ref).max()))
    print(f'{mode}: {100 * equal / total:.3f} % of {total} pixels equal, max logit diff '
          f'{worst:.2e}')
    assert equal / total >= PIXELS_EQUAL
    assert worst <= LOGIT_TOLERANCE
    assert max(abs(ref[1]).max() for ref in expected) > 100 * LOGIT_TOLERANCE
    if mode == 'slide':  # windows overhang: 37x45 -> 53x64, a 3x4 grid of 24x24 windows
        assert len(slide_windows(53, 64, (24, 24), (16, 16))) == 12


def test_metadata_round_trip_and_keys(exports):
    props = OnnxSegmentor(str(exports['slide'])).session.get_modelmeta().custom_metadata_map
    info = from_props(props, 'slide.onnx')
    assert info.version == METADATA_VERSION and int(props['mmvolo_metadata_version']) == 2
    assert info.outlook_impl == 'reference' and not info.dynamic_size
    assert (info.mode, info.crop_size, info.stride) == ('slide', (24, 24), (16, 16))
    assert info.input_size == (24, 24) and info.dynamic_batch and info.opset == 18
    assert info.resize.scale == (64, 64) and info.resize.keep_ratio
    assert info.classes[0] == 'ground' and info.palette[1] == (230, 25, 75)
    assert props['preprocess_mean'] == '[123.675, 116.28, 103.53]'  # the first exports' keys
    assert props['outlook_impl'] == 'reference' and props['num_classes'] == '6'
    from mmvolo_runtime.metadata import to_props

    assert from_props(to_props(info), 'again') == info


@pytest.mark.slow(seconds=5)
def test_cli_writes_label_maps_and_overlays(toy, exports, tmp_path, capsys):
    out = tmp_path / 'out'
    result = run_tool_in_process(INFER, exports['slide'], toy['images'], '--out-dir', out,
                                 '--overlays', '--opacity', 0.6, capsys=capsys)
    assert result.returncode == 0, result.stdout + result.stderr
    segmentor = OnnxSegmentor(str(exports['slide']))
    for path in toy['paths']:
        written = cv2.imread(str(out / f'{path.stem}.png'), cv2.IMREAD_UNCHANGED)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        labels, _ = segmentor.predict(image)
        assert written.dtype == np.uint8 and np.array_equal(written, labels)
        overlay = cv2.imread(str(out / 'overlays' / f'{path.stem}.png'))
        info = segmentor.info
        expected = paint_overlay(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), labels, info.classes,
                                 info.palette, 0.6)
        assert np.array_equal(cv2.cvtColor(overlay, cv2.COLOR_BGR2RGB), expected)
    assert not [p for p in out.rglob('*') if p.name.startswith('.')]  # no temporary file


# ------------------------------------------------------------------------------ bad input
@pytest.fixture(scope='module')
def bad_models(exports, toy) -> dict:
    """Copies of the whole export with edited metadata."""
    root = toy['root']

    def edited(name: str, change) -> Path:
        return edited_copy(exports['whole'], root / name, change)

    return dict(
        none=edited('plain.onnx', lambda props: props.clear()),
        older=edited('older.onnx', lambda props: props.pop('mmvolo_metadata_version')),
        newer=edited('newer.onnx', lambda props: props.update(
            mmvolo_metadata_version=json.dumps(METADATA_VERSION + 1))))


@pytest.mark.parametrize('case', [
    'non_image', 'corrupt', 'no_metadata', 'older', 'newer', 'too_large', 'duplicate_stems',
    'out_dir_holds_input', 'not_onnx', 'opacity'])
def test_bad_input_is_one_line(case, toy, exports, bad_models, tmp_path, capsys):
    image = toy['paths'][0]
    out = tmp_path / 'out'
    (tmp_path / 'notes.txt').write_text('not an image\n')
    (tmp_path / 'broken.png').write_bytes(b'\x89PNG not really')
    (tmp_path / 'dup').mkdir()
    (tmp_path / 'dup' / f'{image.stem}.png').write_bytes(image.read_bytes())
    args = {
        'non_image': (exports['whole'], image, tmp_path / 'notes.txt'),
        'corrupt': (exports['whole'], image, tmp_path / 'broken.png'),
        'no_metadata': (bad_models['none'], image),
        'older': (bad_models['older'], image),
        'newer': (bad_models['newer'], image),
        'too_large': (exports['small'], image),
        'duplicate_stems': (exports['whole'], image, tmp_path / 'dup' / f'{image.stem}.png'),
        'out_dir_holds_input': (exports['whole'], tmp_path / 'dup'),
        'not_onnx': (tmp_path / 'notes.txt', image),
        'opacity': (exports['whole'], image, '--opacity', 2),
    }[case]
    message = {
        'non_image': 'is not an image file',
        'corrupt': 'is not a readable image',
        'no_metadata': 'holds no mmvolo metadata',
        'older': 'older mmvolo without the runtime metadata',
        'newer': 'upgrade mmvolo',
        'too_large': 'export with --shape 64 64',
        'duplicate_stems': 'would both be written to',
        'out_dir_holds_input': 'contains the folder of input',
        'not_onnx': 'cannot load',
        'opacity': '--opacity must be within 0..1',
    }[case]
    out_dir = tmp_path if case == 'out_dir_holds_input' else out
    result = run_tool_in_process(INFER, *args, '--out-dir', out_dir, capsys=capsys)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in single_line_error(result)
    assert not out.exists() and not list(tmp_path.rglob('*.png.*'))


@pytest.mark.slow(seconds=10)
@pytest.mark.parametrize('mode', ['whole', 'slide'])
def test_dynamic_size_file_equals_mmseg_at_every_size(mode, toy, exports):
    """One --dynamic-size file: each image at its own size, as mmseg runs it (no refusal,
    no extra padding, 64x19 included)."""
    segmentor = OnnxSegmentor(str(exports['dynamic' if mode == 'whole' else 'dynamic_slide']),
                              threads=1)
    assert segmentor.dynamic_size and segmentor.input_size is None
    assert segmentor.info.dynamic_size and segmentor.info.mode == mode
    config = toy['config'] if mode == 'whole' else toy['slide']
    expected = mmseg_predictions(config, toy['checkpoint'], toy['paths'])
    equal = total = 0
    worst = 0.0
    sizes = set()
    for path, (labels_ref, logits_ref) in zip(toy['paths'], expected):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        plan = segmentor.plan(*image.shape[:2])
        assert plan.exact
        sizes.add(plan.padded)
        labels, logits = segmentor.predict(image)
        assert logits.shape == logits_ref.shape == (6, *image.shape[:2])
        equal += int((labels == labels_ref).sum())
        total += labels.size
        worst = max(worst, float(abs(logits - logits_ref).max()))
    print(f'dynamic {mode}: {100 * equal / total:.3f} % of {total} pixels equal, max logit '
          f'diff {worst:.2e}, {len(sizes)} graph input sizes')
    assert len(sizes) >= 4  # (64, 64), (53, 64), (38, 64), (64, 19), ...
    assert equal / total >= PIXELS_EQUAL and worst <= LOGIT_TOLERANCE


def test_version_1_files_still_read_and_newer_ones_are_refused(exports, toy):
    """A file of metadata version 1 (before dynamic_size) reads as a fixed-size file and
    predicts as the version-2 file does; a newer version than the runtime's is one line."""
    from mmvolo_runtime import UsageError

    root = toy['root']

    def as_version_1(props):
        props.pop('dynamic_size')
        props['mmvolo_metadata_version'] = '1'

    old = OnnxSegmentor(str(edited_copy(exports['whole'], root / 'v1.onnx', as_version_1)))
    assert old.info.version == 1 and not old.info.dynamic_size and old.input_size == (64, 64)
    image = cv2.imread(str(toy['paths'][0]), cv2.IMREAD_COLOR)
    new_labels, new_logits = OnnxSegmentor(str(exports['whole'])).predict(image)
    old_labels, old_logits = old.predict(image)
    assert np.array_equal(old_labels, new_labels) and np.array_equal(old_logits, new_logits)
    newer = edited_copy(exports['dynamic'], root / 'v3.onnx', lambda props: props.update(
        mmvolo_metadata_version=str(METADATA_VERSION + 1)))
    with pytest.raises(UsageError) as error:
        OnnxSegmentor(str(newer))
    message = str(error.value)
    assert '\n' not in message and f'metadata version {METADATA_VERSION + 1}' in message
    assert f'knows up to {METADATA_VERSION}' in message and 'upgrade mmvolo' in message


def test_api_refuses_a_non_image_array(exports):
    segmentor = OnnxSegmentor(str(exports['whole']))
    from mmvolo_runtime import UsageError

    with pytest.raises(UsageError, match=r'takes an \(H, W, 3\) uint8 BGR image'):
        segmentor.predict(np.zeros((8, 8), np.float32))


def test_import_footprint_is_numpy_opencv_onnxruntime():
    heavy = {'torch', 'mmseg', 'mmengine', 'mmcv', 'mmvolo', 'onnx'}
    code = ('import sys, mmvolo_runtime, mmvolo_runtime.cli; '
            f'print(sorted({{m.split(".")[0] for m in sys.modules}} & set({sorted(heavy)!r})))')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            cwd='/', timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'
