"""``tools/deploy/quantize_onnx.py``: static int8 quantization of an mmvolo ONNX export.

    python tools/deploy/quantize_onnx.py MODEL.onnx --calibrate DIR --num N --out OUT.onnx
        [--holdout DIR] [--labels DIR] [--min-agreement 0.99] [--threads N]

1. Calibration: the first ``N`` images of ``--calibrate`` (sorted) go through the runtime's own
   pipeline (:class:`~.segmentor.OnnxSegmentor`: test Resize, normalisation, padding, sliding
   windows one per batch), and the graph inputs it would run are what onnxruntime's MinMax
   calibrator sees (:class:`PipelineCalibrationReader`; one batch at a time, ranges merged).
2. ``onnxruntime.quantization.quantize_static`` of the Conv, MatMul and Gemm nodes
   (:data:`QUANTIZED_OPS`): QDQ format, int8 weights per output channel (symmetric), int8
   activations per tensor, after ``quant_pre_process`` (ONNX shape
   inference and onnxruntime's basic graph optimisation).
3. Check, before anything is written: labels of the int8 file vs the fp32 file on held-out
   images (``--holdout``, default: the images of ``--calibrate`` after the first ``N``; never
   a calibration image), ``agreement = equal pixels / pixels``; with ``--labels`` (label maps
   ``<stem>.png``, 255 ignored) also mmseg's mIoU of both (``IoU_c = |P_c ∩ G_c| / |P_c ∪
   G_c|`` over all held-out pixels, mean over classes with a non-empty union). ``agreement <
   --min-agreement`` refuses the file: one line, nothing written.
4. The file keeps the input's metadata plus ``mmvolo_quantization`` (JSON: format, calibration
   images, agreement, mIoU) and is renamed into place from a hidden temporary file.

It also reports what runs in int8: the op types wrapped by Quantize/DequantizeLinear pairs in
the file, and the kernels onnxruntime's CPU provider runs after fusing them
(:func:`int8_kernels`; ``QLinear*`` int8, the rest float). Needs ``onnx`` besides the runtime
(``onnxruntime.quantization`` imports it); torch is not imported. Bad input is one line
``error: ...`` (exit 2; 1 when the check refuses the file).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import os.path as osp
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .errors import UsageError, run_cli
from .inputs import list_images
from .segmentor import OnnxSegmentor

#: The metadata key the quantized file adds (JSON; see the module docstring).
QUANT_KEY = 'mmvolo_quantization'
DEFAULT_MIN_AGREEMENT = 0.99
#: Op types whose onnxruntime CPU kernels compute in int8 (the rest computes in float).
INT8_KERNEL_PREFIXES = ('QLinear', 'QGemm', 'MatMulInteger', 'ConvInteger', 'QAttention',
                        'DynamicQuantize')
QDQ_OPS = ('QuantizeLinear', 'DequantizeLinear')
#: The op types quantized: the ones carrying the arithmetic. Quantizing every op onnxruntime
#: can (softmax, adds, layer norms, data movement too) measured worse on VOLO-D1 in both label
#: agreement and time (docs/deploy.md, "int8").
QUANTIZED_OPS = ('Conv', 'MatMul', 'Gemm')


class _InputRecorder(OnnxSegmentor):
    """An :class:`OnnxSegmentor` that records the batches its pipeline would run and returns
    zeros instead of running them (calibration needs the inputs only)."""

    def __init__(self, model_path: str) -> None:
        super().__init__(model_path, providers=['CPUExecutionProvider'], threads=1,
                         window_batch=1)
        self.batches: list[np.ndarray] = []

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(np.ascontiguousarray(batch, np.float32))
        return np.zeros((batch.shape[0], self.info.out_channels, *batch.shape[2:]), np.float32)


try:  # onnxruntime.quantization imports onnx, which the runtime alone does not need
    from onnxruntime.quantization import CalibrationDataReader
except ImportError:  # main() says what to install
    CalibrationDataReader = object


class PipelineCalibrationReader(CalibrationDataReader):
    """onnxruntime's ``CalibrationDataReader`` over the graph inputs the runtime's pipeline
    makes of ``images`` (one (1, C, h, w) float32 batch per whole image or sliding window);
    ``set_range`` lets the calibrator take them a batch at a time (``CalibStridedMinMax``)."""

    def __init__(self, model_path: str, images: Sequence[str]) -> None:
        from .cli import read_image

        recorder = _InputRecorder(model_path)
        for path in images:
            image = read_image(path)
            recorder.plan(*image.shape[:2], source=f'calibration image {path}')
            recorder.predict(image)
        self.input_name = recorder.input_name
        self.batches = recorder.batches
        self.images = len(images)
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._next, None)
        return None if batch is None else {self.input_name: batch}


@dataclass(frozen=True)
class Agreement:
    """int8 vs fp32 on held-out images: ``agreement`` = equal labels / ``pixels``; mIoU (%) of
    each against label maps when given (None otherwise)."""

    images: int
    pixels: int
    agreement: float
    miou_fp32: float | None = None
    miou_int8: float | None = None


def quantize_file(model_path: str, reader: PipelineCalibrationReader, out_path: str,
                  work_dir: str) -> None:
    """``quantize_static`` (QDQ, per-channel int8 weights, int8 activations, MinMax) of the
    :data:`QUANTIZED_OPS` of ``model_path`` into ``out_path``; ``work_dir`` holds the
    pre-processed model."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = osp.join(work_dir, 'prepared.onnx')
    with _quiet():
        try:  # symbolic shape inference stops at Col2Im; ONNX's own inference is enough
            quant_pre_process(model_path, prepared, skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation only
            prepared = model_path
        try:
            quantize_static(prepared, out_path, reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(QUANTIZED_OPS),
                            per_channel=True, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={'CalibStridedMinMax': 1})
        except Exception as error:  # noqa: BLE001 - onnxruntime's quantizer raises many types
            raise UsageError(f'onnxruntime cannot quantize {model_path}: '
                             f'{_first_line(error)}; nothing written', exit_code=1) from None


def write_metadata(path: str, props: dict[str, str]) -> None:
    """Replace the metadata_props of the ONNX file at ``path`` with ``props``."""
    import onnx

    model = onnx.load(path)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)


def compare(fp32: OnnxSegmentor, int8: OnnxSegmentor, images: Sequence[str],
            labels_dir: str | None = None) -> Agreement:
    """Label agreement of ``int8`` with ``fp32`` over ``images``; mIoU of both against
    ``labels_dir/<stem>.png`` (ignore index = the file's ``seg_pad_val``) when given."""
    from .cli import read_image

    classes = max(fp32.info.num_classes, 2)
    ignore = int(fp32.info.seg_pad_val)
    equal = total = 0
    areas = {name: np.zeros((3, classes), np.int64) for name in ('fp32', 'int8')}
    for path in images:
        image = read_image(path)
        ref, _ = fp32.predict(image)
        out, _ = int8.predict(image)
        equal += int((ref == out).sum())
        total += ref.size
        if labels_dir is not None:
            gt = _label_map(labels_dir, path, ref.shape)
            for name, pred in (('fp32', ref), ('int8', out)):
                areas[name] += _iou_areas(pred, gt, classes, ignore)
    miou = {name: _miou(area) for name, area in areas.items()} if labels_dir else {}
    return Agreement(len(images), total, equal / total, miou.get('fp32'), miou.get('int8'))


def _label_map(labels_dir: str, image_path: str, shape: tuple[int, ...]) -> np.ndarray:
    import cv2

    path = osp.join(labels_dir, osp.splitext(osp.basename(image_path))[0] + '.png')
    gt = cv2.imread(path, cv2.IMREAD_UNCHANGED) if osp.isfile(path) else None
    if gt is None or gt.ndim != 2:
        raise UsageError(f'--labels {labels_dir}: no single-channel label map {path} for '
                         f'held-out image {image_path}; pass the folder of <stem>.png labels')
    if gt.shape != tuple(shape):
        raise UsageError(f'label map {path} is {gt.shape[0]}x{gt.shape[1]}, its image '
                         f'{shape[0]}x{shape[1]}: pass the labels of these images')
    return gt


def _iou_areas(pred: np.ndarray, gt: np.ndarray, classes: int, ignore: int) -> np.ndarray:
    """(3, classes): intersection, prediction and label areas per class (mmseg's
    ``intersect_and_union``, pixels labelled ``ignore`` left out)."""
    keep = gt != ignore
    pred, gt = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
    inter = pred[pred == gt]
    return np.stack([np.bincount(values[values < classes], minlength=classes)[:classes]
                     for values in (inter, pred, gt)])


def _miou(area: np.ndarray) -> float:
    inter, pred, gt = area
    union = pred + gt - inter
    seen = union > 0  # mmseg: IoU nan (left out of the mean) where the union is empty
    return float(100 * np.mean(inter[seen] / union[seen])) if seen.any() else 0.0


def int8_kernels(path: str) -> dict[str, dict[str, int]]:
    """What onnxruntime's CPU provider runs for the quantized file at ``path``:
    ``{'qdq': {op: n}, 'float': {op: n}}`` in the file (``qdq``: an op whose every non-constant
    float input comes from a DequantizeLinear) and ``{'int8': ..., 'fp32': ..., 'convert': ...}``
    after onnxruntime has fused the QDQ pairs into its kernels (graph optimisation level ALL)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(path)
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    constants = {init.name for init in model.graph.initializer}
    in_file: dict[str, collections.Counter] = {'qdq': collections.Counter(),
                                                'float': collections.Counter()}
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            continue
        fed = [name for name in node.input if name and name not in constants
               and producer.get(name) not in ('Constant', 'Shape')]
        wrapped = bool(fed) and all(producer.get(name) == 'DequantizeLinear' for name in fed)
        in_file['qdq' if wrapped else 'float'][node.op_type] += 1
    with tempfile.TemporaryDirectory(prefix='mmvolo-int8-') as folder:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = osp.join(folder, 'optimized.onnx')
        ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        optimized = onnx.load(options.optimized_model_filepath)
    kernels: dict[str, collections.Counter] = {'int8': collections.Counter(),
                                               'fp32': collections.Counter(),
                                               'convert': collections.Counter()}
    for node in optimized.graph.node:
        kind = ('convert' if node.op_type in QDQ_OPS else
                'int8' if node.op_type.startswith(INT8_KERNEL_PREFIXES) else 'fp32')
        kernels[kind][node.op_type] += 1
    return {name: dict(counter.most_common()) for name, counter in {**in_file, **kernels}.items()}


def _check_args(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(calibration images, held-out images); one-line UsageError for bad arguments."""
    if args.num < 1:
        raise UsageError(f'--num must be at least 1, got {args.num}')
    if not args.min_agreement >= 0:
        raise UsageError(f'--min-agreement is a fraction (0..1; above 1 checks and never '
                         f'writes), got {args.min_agreement}')
    if args.threads is not None and args.threads < 1:
        raise UsageError(f'--threads must be at least 1, got {args.threads}')
    if not args.out.endswith('.onnx'):
        raise UsageError(f'--out {args.out} must end in .onnx')
    if osp.isdir(args.out):
        raise UsageError(f'--out {args.out} is a folder; pass a file name ending in .onnx')
    folder = osp.dirname(osp.abspath(args.out))
    if not osp.isdir(folder):
        raise UsageError(f'--out {args.out}: folder {folder} does not exist; create it first')
    if osp.exists(args.model) and osp.exists(args.out) and osp.samefile(args.model, args.out):
        raise UsageError(f'--out {args.out} is the input model; write the int8 file elsewhere')
    if not osp.isdir(args.calibrate):
        raise UsageError(f'--calibrate {args.calibrate} is not a folder of images')
    available = list_images([args.calibrate])
    if args.num > len(available):
        raise UsageError(f'--num {args.num}: {args.calibrate} holds {len(available)} images; '
                         f'pass --num {len(available)} or fewer')
    calibration = available[:args.num]
    if args.holdout is None:
        holdout = available[args.num:]
        if not holdout:
            raise UsageError(f'no held-out images: --num {args.num} takes every image of '
                             f'{args.calibrate}; pass --holdout DIR or a smaller --num')
    else:
        holdout = list_images([args.holdout])
        seen = {osp.realpath(path) for path in calibration}
        shared = [path for path in holdout if osp.realpath(path) in seen]
        if shared:
            raise UsageError(f'held-out image {shared[0]} is also a calibration image; pass '
                             'a --holdout folder of other images')
    if args.labels is not None:
        if not osp.isdir(args.labels):
            raise UsageError(f'--labels {args.labels} is not a folder of label maps')
        for path in holdout:
            label = osp.join(args.labels, osp.splitext(osp.basename(path))[0] + '.png')
            if not osp.isfile(label):
                raise UsageError(f'--labels {args.labels}: no label map {label} for held-out '
                                 f'image {path}; pass the folder of their <stem>.png labels')
    return calibration, holdout


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(description='Static int8 quantization (QDQ) of an mmvolo ONNX export, '
                     'calibrated through the runtime\'s pipeline and checked against fp32')
    parser.add_argument('model', help='the fp32 .onnx file from tools/deploy/export_onnx.py')
    parser.add_argument('--calibrate', required=True, metavar='DIR',
                        help='folder of calibration images (its first --num, sorted)')
    parser.add_argument('--num', type=int, required=True, metavar='N',
                        help='calibration images to use')
    parser.add_argument('--out', required=True, help='the int8 .onnx to write')
    parser.add_argument('--holdout', metavar='DIR', help='images to check agreement on '
                        '(default: those of --calibrate after the first N)')
    parser.add_argument('--labels', metavar='DIR', help='label maps <stem>.png of the held-out '
                        'images: also report mIoU of fp32 and int8')
    parser.add_argument('--min-agreement', type=float, default=DEFAULT_MIN_AGREEMENT,
                        help='refuse (write nothing) below this fraction of held-out pixels '
                        f'labelled as fp32 labels them (default {DEFAULT_MIN_AGREEMENT}; '
                        'above 1: check only, never write)')
    parser.add_argument('--threads', type=int, default=None,
                        help='onnxruntime intra-op threads for the check')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if CalibrationDataReader is object:
        raise UsageError('int8 quantization needs onnx (onnxruntime.quantization imports it): '
                         "pip install onnx, or pip install -e '.[deploy]'")
    calibration, holdout = _check_args(args)
    fp32 = OnnxSegmentor(args.model, providers=['CPUExecutionProvider'], threads=args.threads)
    props = dict(fp32.session.get_modelmeta().custom_metadata_map)
    if QUANT_KEY in props:
        raise UsageError(f'{args.model} is already quantized ({QUANT_KEY} in its metadata); '
                         'pass the fp32 export')
    reader = PipelineCalibrationReader(args.model, calibration)
    folder = osp.dirname(osp.abspath(args.out))
    with tempfile.TemporaryDirectory(prefix=f'.{osp.basename(args.out)}.', dir=folder) as work:
        tmp = osp.join(work, 'int8.onnx')
        quantize_file(args.model, reader, tmp, work)
        int8 = OnnxSegmentor(tmp, providers=['CPUExecutionProvider'], threads=args.threads)
        result = compare(fp32, int8, holdout, args.labels)
        kernels = int8_kernels(tmp)
        print(_summary(result, reader, kernels))
        if result.agreement < args.min_agreement:
            raise UsageError(f'int8 labels agree with fp32 on {100 * result.agreement:.3f} % '
                             f'of {result.pixels} held-out pixels < --min-agreement '
                             f'{100 * args.min_agreement:g} %; nothing written', exit_code=1)
        record = dict(format='QDQ', ops=list(QUANTIZED_OPS),
                      weights='int8 symmetric per output channel',
                      activations='int8 per tensor', calibration='MinMax',
                      calibration_images=reader.images, calibration_batches=len(reader),
                      calibration_source=osp.basename(osp.normpath(args.calibrate)),
                      **{f'holdout_{key}': value for key, value in asdict(result).items()})
        write_metadata(tmp, {**props, QUANT_KEY: json.dumps(record)})
        OnnxSegmentor(tmp, providers=['CPUExecutionProvider'])  # the file as written loads
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, args.out)
    size = osp.getsize(args.out) / 2 ** 20
    print(f'wrote {args.out} ({size:.1f} MiB, int8 QDQ; fp32 '
          f'{osp.getsize(args.model) / 2 ** 20:.1f} MiB)')


def _summary(result: Agreement, reader: PipelineCalibrationReader, kernels: dict) -> str:
    lines = [f'calibrated on {reader.images} images ({len(reader)} graph inputs through the '
             f'runtime\'s pipeline); held out: {result.images} images, {result.pixels} pixels',
             f'int8 vs fp32: {100 * result.agreement:.3f} % of the labels equal']
    if result.miou_fp32 is not None:
        lines.append(f'mIoU: fp32 {result.miou_fp32:.2f}, int8 {result.miou_int8:.2f} '
                     f'(change {result.miou_int8 - result.miou_fp32:+.2f})')
    for key, title in (('qdq', 'ops between QDQ pairs'), ('float', 'ops left in float'),
                       ('int8', 'onnxruntime int8 kernels'), ('fp32', 'onnxruntime fp32 kernels'),
                       ('convert', 'int8<->fp32 conversions')):
        ops = ', '.join(f'{op} {count}' for op, count in kernels[key].items())
        lines.append(f'{title}: {ops or "none"}')
    return '\n'.join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line ``error: ...`` (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f'{message} (see --help)')


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs per-weight warnings to the root logger: hide them."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:limit]


def run() -> None:
    run_cli(main)
