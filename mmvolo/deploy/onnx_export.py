"""Export a segmentor (VOLO backbone + decode head) to ONNX and check it in onnxruntime.

    python tools/deploy/export_onnx.py CONFIG [CHECKPOINT] --out FILE.onnx [--shape H W]
        [--dynamic] [--dynamic-size] [--opset 18] [--tolerance 1e-4] [--benchmark N] [--trust]
        [--cfg-options KEY=VALUE ...]

The graph maps images (B, C, H, W), float32, already normalised the way the config's
``data_preprocessor`` does it (mean/std, BGR->RGB; not part of the graph, recorded in the
file's metadata), to logits (B, num_classes, H, W): mmseg's ``EncoderDecoder`` backbone +
decode head, bilinearly resized to the input size (``encode_decode`` of a whole image; the
auxiliary head is training-only and not exported). ``--shape`` (default: the config's
``crop_size``) fixes H and W; ``--dynamic`` makes the batch size dynamic; ``--dynamic-size``
makes batch, H and W dynamic (one file for every image size; ``--shape`` is then one of the
sizes checked, see :func:`dynamic_check_sizes`), with adaptive pooling computed from the runtime
size (:mod:`mmvolo.deploy.adaptive_pool`). Without CHECKPOINT the weights are random (checks
the graph, not a model to deploy).

Export uses PyTorch's dynamo-based exporter (``torch.onnx.export(dynamo=True)``, which needs
onnxscript), with every mmvolo op (outlook attention, local_aggregate and the other mixers'
ops) forced to its ``'reference'`` impl (:func:`mmvolo.ops.forced_impl`): outlook's
unfold/fold become standard ONNX
ops (fold -> ``Col2Im``, hence opset >= 18), while the fast impls are custom ops ONNX does
not know. The file is then run in onnxruntime (CPUExecutionProvider) on random input and
compared with the PyTorch model as configured (its own outlook impl); the max abs difference
is printed, and beyond ``--tolerance`` the export fails (exit 1). The .onnx is written to a
temporary file, checked, then renamed into place: a failed run leaves nothing (an existing
FILE is kept). ``--benchmark N`` also prints PyTorch vs onnxruntime latency (median of N).

Bad input (missing config, unreadable checkpoint, non-positive shape, an output that is the
checkpoint or in a missing folder, onnx/onnxruntime/onnxscript not installed) prints one line
``error: ...`` and exits with status 2 (1: unusable checkpoint, export or parity failure).
The metadata_props also record what ``tools/deploy/infer_onnx.py`` (:mod:`mmvolo_runtime`,
no torch) needs to reproduce mmseg's inference: the test Resize, the data_preprocessor's test
padding, ``test_cfg`` (whole/slide, crop and stride), classes and palette, ``align_corners``,
the opset, input size, whether it is dynamic, the outlook impl in the graph and mmvolo's
version (:class:`mmvolo_runtime.metadata.ModelInfo`, versioned by ``mmvolo_metadata_version``).
In slide mode ``--shape`` defaults to ``test_cfg.crop_size``.
See docs/deploy.md.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import os.path as osp
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

import mmvolo  # noqa: F401 - registers VOLO and its modules
from mmvolo import runtime  # noqa: F401 - the stack fixes, before mmseg loads
from mmvolo.cli import UsageError, check_arch, check_seg_config, load_config
from mmvolo.cli.arguments import ToolArgumentParser, add_cfg_options
from mmvolo.cli.checks import check_checkpoint, model_state_dict, read_checkpoint_for_tool
from mmvolo.deploy.adaptive_pool import export_safe_pooling
from mmvolo.fileio import atomic_path
from mmvolo.ops import IMPL_ENV_VAR, forced_impl
from mmvolo.utils.errors import first_line
from mmvolo.version import __version__ as mmvolo_version
from mmvolo_runtime.metadata import KNOWN_TRANSFORMS, ModelInfo, ResizeStep, to_props
from mmvolo_runtime.paint import default_palette

#: Col2Im (the fold of the reference outlook attention) exists from opset 18 on.
MIN_OPSET = 18
DEFAULT_OPSET = 18
#: The impl outlook attention runs as in the exported graph (see the module docstring).
EXPORT_IMPL = 'reference'
#: A protobuf message (the .onnx without external data) cannot exceed 2 GiB.
PROTOBUF_LIMIT = 2 ** 31
DEPLOY_PACKAGES = ('onnx', 'onnxruntime', 'onnxscript')
INPUT_NAME, OUTPUT_NAME = 'images', 'seg_logits'
#: The batch sizes the parity check runs (a --dynamic export is traced at batch 2).
PARITY_BATCHES = {False: (1,), True: (1, 2)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ToolArgumentParser(description='Export a segmentor to ONNX; check it in '
                                'onnxruntime')
    parser.add_argument('config', help='model config file')
    parser.add_argument('checkpoint', nargs='?', help='trained checkpoint (default: random '
                        'weights, to check the graph only)')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input height and width (default: the config crop_size)')
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic batch size (H and W stay fixed: see --dynamic-size)')
    parser.add_argument('--dynamic-size', action='store_true',
                        help='dynamic batch, height and width: one file serves every image '
                        'size (checked at several sizes; see docs/deploy.md)')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                        help=f'ONNX opset, >= {MIN_OPSET} (default {DEFAULT_OPSET})')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='max abs difference to PyTorch allowed (default 1e-4)')
    parser.add_argument('--benchmark', type=int, default=0, metavar='N',
                        help='also time PyTorch and onnxruntime, median of N runs')
    parser.add_argument('--trust', action='store_true',
                        help='unpickle CHECKPOINT with full trust (runs code inside it; only '
                        'for files you trust)')
    add_cfg_options(parser)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------- checks
def check_numbers(args: argparse.Namespace) -> None:
    """Shape, opset, tolerance and benchmark count, before anything is loaded."""
    if args.shape is not None:
        check_shape(tuple(args.shape), '--shape')
    if args.opset < MIN_OPSET:
        raise UsageError(f'--opset {args.opset}: outlook attention exports as Col2Im, which '
                         f'needs opset >= {MIN_OPSET}; pass --opset {MIN_OPSET} or higher')
    if not args.tolerance > 0:
        raise UsageError(f'--tolerance must be positive, got {args.tolerance}')
    if args.benchmark < 0:
        raise UsageError(f'--benchmark N must be at least 1 (0: no benchmark), got '
                         f'{args.benchmark}')


def check_shape(shape: tuple[int, ...], source: str) -> None:
    if len(shape) != 2 or min(shape) <= 0:
        raise UsageError(f'{source} must be two positive sizes H W, got '
                         f'{" ".join(map(str, shape))}')


def check_out(out: str, inputs: list[str]) -> None:
    """A .onnx file in an existing folder that is none of the inputs."""
    for path in inputs:
        if osp.realpath(out) == osp.realpath(path):
            raise UsageError(f'--out {out} is the input file {path}: it would be overwritten; '
                             'choose another output name')
    if osp.isdir(out):
        raise UsageError(f'--out {out} is a folder; name a .onnx file in it')
    if not out.endswith('.onnx'):
        raise UsageError(f'--out {out}: name a .onnx file (e.g. --out work_dirs/model.onnx)')
    folder = osp.dirname(osp.abspath(out))
    if not osp.isdir(folder):
        raise UsageError(f'--out {out}: folder {folder} does not exist; create it first')


def check_deploy_packages() -> dict[str, Any]:
    """Import onnx, onnxruntime and onnxscript; one line naming the install if any is missing."""
    modules, missing = {}, []
    for name in DEPLOY_PACKAGES:
        try:
            modules[name] = importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageError(f'ONNX export needs {", ".join(DEPLOY_PACKAGES)} ({", ".join(missing)} '
                         "missing): pip install -e '.[deploy]' (or bash tools/setup_env.sh)")
    return modules


def default_shape(cfg) -> tuple[int, int]:
    """The export size when --shape is not given: the sliding window (``test_cfg.crop_size``)
    in slide mode, else the config's ``crop_size`` (512x512 if it has none)."""
    test_cfg = cfg.model.get('test_cfg') or {}
    if test_cfg.get('mode') == 'slide' and test_cfg.get('crop_size') is not None:
        crop, source = test_cfg['crop_size'], "the config's test_cfg.crop_size"
    else:
        crop, source = cfg.get('crop_size', (512, 512)), "the config's crop_size"
    try:
        shape = int(crop[0]), int(crop[1])
    except (TypeError, ValueError, IndexError):
        raise UsageError(f'{source} {crop!r} is not (H, W); pass --shape H W') from None
    check_shape(shape, f'{source} (or --shape)')
    return shape


# ------------------------------------------------------------------------------- the model
def build_segmentor(cfg, checkpoint: str | None, trust: bool):
    """The config's segmentor on CPU in eval mode (SyncBN as BN), checkpoint loaded if given.

    Outlook attention keeps the impl the config asks for (``model.backbone.outlook_impl``,
    else $MMVOLO_OUTLOOK_IMPL, else 'auto'): that is the model the parity check compares to.
    """
    from mmvolo.utils.config import build_model_for_analysis

    backbone = cfg.model.get('backbone', {})
    outlook_impl = backbone.get('outlook_impl') if isinstance(backbone, dict) else None
    if checkpoint is not None:
        check_checkpoint(checkpoint, cfg, trust=trust)
    try:
        model = build_model_for_analysis(cfg.copy(), outlook_impl=outlook_impl)
    except Exception as error:  # noqa: BLE001 - a config whose model does not build
        raise UsageError(f'cannot build the model: {first_line(error, 300)}') from None
    from mmseg.models.segmentors import EncoderDecoder

    if not isinstance(model, EncoderDecoder) or isinstance(model.decode_head, torch.nn.ModuleList):
        raise UsageError(f'{type(model).__name__} is not an EncoderDecoder with one decode head: '
                         'this tool exports only those')
    if checkpoint is not None:
        loaded = read_checkpoint_for_tool(checkpoint, trust)
        state_dict = model_state_dict(loaded)
        meta = loaded.get('meta') if isinstance(loaded, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get('dataset_meta'), dict):
            model.dataset_meta = meta['dataset_meta']  # as mmseg's init_model keeps it
        result = model.load_state_dict(state_dict, strict=False)
        missing = [key for key in result.missing_keys if not key.endswith('num_batches_tracked')]
        if missing:  # check_checkpoint refuses these; kept as a guard
            raise UsageError(f'checkpoint {checkpoint} lacks {missing[0]}', exit_code=1)
    return model.eval()


class SegmentorLogits(torch.nn.Module):
    """images (B, C, H, W), normalised -> logits (B, num_classes, H, W).

    mmseg's ``EncoderDecoder.encode_decode`` for a whole image (``test_cfg`` mode 'whole'):
    backbone (+ neck), decode head, bilinear resize to the input size.
    """

    def __init__(self, segmentor: torch.nn.Module) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.segmentor.extract_feat(images)
        logits = self.segmentor.decode_head.forward(features)
        return F.interpolate(logits, size=images.shape[2:], mode='bilinear',
                             align_corners=self.segmentor.decode_head.align_corners)


def in_channels(segmentor) -> int:
    return int(getattr(segmentor.backbone, 'in_channels', 3))


def model_bytes(module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def metadata(cfg, config: str, segmentor, inputs: str, *, size: tuple[int, int],
             opset: int, dynamic: bool, dynamic_size: bool = False) -> dict[str, str]:
    """The file's metadata_props: what the graph expects (``input``), the data_preprocessor's
    normalisation (not in the graph) and what :mod:`mmvolo_runtime` needs to reproduce mmseg's
    inference (:class:`mmvolo_runtime.metadata.ModelInfo`, format version
    :data:`~mmvolo_runtime.metadata.METADATA_VERSION`)."""
    props = to_props(model_info(cfg, config, segmentor, size=size, opset=opset,
                                dynamic=dynamic, dynamic_size=dynamic_size))
    props.update(input=inputs)
    return props


def model_info(cfg, config: str, segmentor, *, size: tuple[int, int], opset: int,
               dynamic: bool, dynamic_size: bool = False) -> ModelInfo:
    """The config's test-time inference as :class:`ModelInfo` (read, nothing built or run)."""
    pre = cfg.model.get('data_preprocessor') or {}
    test_pad = pre.get('test_cfg') or {}
    test_cfg = cfg.model.get('test_cfg') or {}
    mode = test_cfg.get('mode', 'whole')
    head = segmentor.decode_head
    resize, unsupported = test_resize(cfg.get('test_pipeline'))
    classes, palette = class_names_and_palette(cfg, segmentor)
    return ModelInfo(
        config=osp.basename(config), mmvolo_version=mmvolo_version, opset=opset,
        input_size=size, dynamic_batch=dynamic, num_classes=int(head.num_classes),
        out_channels=int(head.out_channels),
        threshold=None if head.threshold is None else float(head.threshold),
        mean=tuple(float(v) for v in pre.get('mean') or []),
        std=tuple(float(v) for v in pre.get('std') or []),
        bgr_to_rgb=bool(pre.get('bgr_to_rgb', False)),
        pad_val=float(pre.get('pad_val', 0)), seg_pad_val=float(pre.get('seg_pad_val', 255)),
        test_pad_size=_pair(test_pad.get('size')), test_pad_divisor=test_pad.get('size_divisor'),
        resize=resize, mode=mode,
        crop_size=_pair(test_cfg.get('crop_size')) if mode == 'slide' else None,
        stride=_pair(test_cfg.get('stride')) if mode == 'slide' else None,
        align_corners=bool(head.align_corners), classes=classes, palette=palette,
        unsupported=unsupported, dynamic_size=dynamic_size, outlook_impl=EXPORT_IMPL)


def test_resize(pipeline) -> tuple[ResizeStep | None, str | None]:
    """The test pipeline's ``Resize``, and why :mod:`mmvolo_runtime` cannot reproduce the
    pipeline (None when it can: only the transforms of ``KNOWN_TRANSFORMS``, one cv2 Resize
    with a ``scale``, images loaded in colour)."""
    if not pipeline:
        return None, 'the config has no test_pipeline'
    resize, problems = None, []
    for step in pipeline:
        kind = str(step.get('type', '')).split('.')[-1]
        if kind not in KNOWN_TRANSFORMS:
            problems.append(f'test_pipeline step {kind}')
        elif kind == 'LoadImageFromFile' and step.get('color_type', 'color') != 'color':
            problems.append(f"LoadImageFromFile color_type {step['color_type']!r}")
        elif kind == 'Resize':
            scale = step.get('scale')
            if resize is not None or scale is None or step.get('backend', 'cv2') != 'cv2':
                problems.append('a Resize other than one cv2 Resize with a scale')
                continue
            scale = (scale, scale) if isinstance(scale, int) else tuple(scale)
            resize = ResizeStep((int(scale[0]), int(scale[1])), bool(step.get('keep_ratio')),
                                str(step.get('interpolation', 'bilinear')))
    return resize, (', '.join(problems) + ' (not reproduced by mmvolo_runtime)'
                    if problems else None)


def class_names_and_palette(cfg, segmentor) -> tuple[tuple[str, ...], tuple]:
    """Classes and palette as mmseg's ``init_model`` gives them to the visualizer: the
    checkpoint's ``meta['dataset_meta']``, else the test dataset class's ``METAINFO`` (the
    class attribute, updated by the config's ``metainfo``; no data read); class ``i`` named
    ``'i'`` when neither names them; a missing palette is mmseg's seeded random one."""
    num_classes = int(segmentor.decode_head.num_classes)
    meta = dict(getattr(segmentor, 'dataset_meta', None) or {})
    if not meta.get('classes'):
        meta = dataset_metainfo(cfg)
    classes = tuple(str(name) for name in meta.get('classes') or ()) \
        or tuple(str(index) for index in range(num_classes))
    palette = [tuple(int(v) for v in color) for color in meta.get('palette') or ()]
    if len(palette) < len(classes):
        palette = default_palette(len(classes))
    return classes, tuple(tuple(color) for color in palette[:len(classes)])


def dataset_metainfo(cfg) -> dict:
    """The test dataset class's METAINFO merged with the config's ``metainfo`` ({} if none)."""
    from mmseg.registry import DATASETS

    dataset = ((cfg.get('test_dataloader') or {}).get('dataset')) or {}
    try:
        dataset_class = DATASETS.get(dataset.get('type'))
    except Exception:  # noqa: BLE001 - a registry lookup of an unknown or odd type
        dataset_class = None
    info = dict(getattr(dataset_class, 'METAINFO', None) or {})
    info.update(dataset.get('metainfo') or {})
    return info


def runtime_notes(props: dict[str, str], size: tuple[int, int],
                  dynamic_size: bool = False) -> list[str]:
    """Why ``tools/deploy/infer_onnx.py`` would refuse the file (export still succeeds)."""
    import json

    notes = []
    if json.loads(props['runtime_unsupported']):
        notes.append(f"{json.loads(props['runtime_unsupported'])}: tools/deploy/infer_onnx.py "
                     'will refuse this file')
    test_cfg = json.loads(props['test_cfg'])
    if test_cfg['mode'] == 'slide' and tuple(test_cfg['crop_size']) != size \
            and not dynamic_size:
        crop = test_cfg['crop_size']
        notes.append(f'the config slides {crop[0]}x{crop[1]} windows but --shape is '
                     f'{size[0]} {size[1]}: tools/deploy/infer_onnx.py needs --shape {crop[0]} '
                     f'{crop[1]} (the default)')
    return notes


def _pair(value) -> tuple[int, int] | None:
    if value is None:
        return None
    value = (value, value) if isinstance(value, int) else tuple(value)
    return int(value[0]), int(value[1])


# ------------------------------------------------------------------------------- export
def export(module, example, dynamic: bool, opset: int, *, dynamic_size: bool = False):
    """``torch.onnx.export(dynamo=True)`` with every mmvolo op forced to EXPORT_IMPL.

    ``dynamic``: dim 0 of the input is dynamic. ``dynamic_size``: dims 0, 2 and 3 are
    (``Dim.DYNAMIC``: an export that would specialise them fails), and every
    ``nn.AdaptiveAvgPool2d`` of ``module`` runs, for the export only, as
    :class:`~mmvolo.deploy.adaptive_pool.SizeFollowingAvgPool2d` (bins from the runtime size).
    Python branches on the size follow ``example``'s size: trace at :func:`dynamic_trace_size`.
    """
    from torch.export import Dim

    if dynamic_size:
        dynamic_shapes = {INPUT_NAME: {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}}
    else:
        dynamic_shapes = {INPUT_NAME: {0: Dim('batch', min=1)}} if dynamic else None
    pooling = export_safe_pooling(module) if dynamic_size else contextlib.nullcontext()
    with forced_impl(EXPORT_IMPL), pooling, torch.no_grad():
        try:
            program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=dynamic_shapes, external_data=False,
                                        verbose=False)
        except Exception as error:  # noqa: BLE001 - the exporter raises many types
            raise UsageError(f'torch.onnx.export failed: {export_failure(error)}',
                             exit_code=1) from None
    if dynamic_size:
        check_dynamic_input(program.model)
    return program


def check_dynamic_input(model) -> None:
    """One line (exit 1) when a dim of the exported input that should be dynamic is fixed
    (torch.onnx may fall back to a draft export that specialises instead of failing)."""
    dims = model.graph.inputs[0].shape
    fixed = [name for name, dim in zip('BCHW', dims) if name != 'C' and isinstance(dim, int)]
    if fixed:
        raise UsageError(f'the exporter fixed dimension(s) {", ".join(fixed)} of the input '
                         f'({" x ".join(map(str, dims))}): some code branches on the image size '
                         'in a way torch.export cannot keep dynamic; export without '
                         '--dynamic-size (one file per size)', exit_code=1)


def dynamic_trace_size(segmentor, shape: tuple[int, int]) -> tuple[int, int]:
    """The (H, W) a ``--dynamic-size`` export is traced at.

    A branch on the size (VOLO: pad to a multiple of 16 only when needed, resize ``pos_embed``
    only when the token grid differs from its own) is traced down the branch of the example,
    so the example takes the general one in both dimensions: not a multiple of 16, and a
    token grid unlike ``pos_embed``'s (``16 * grid + (21, 43)``: grid + 2, grid + 3), which
    is exact at every size (zero padding of zero rows; bicubic resize to the same size is the
    identity). Without a ``pos_embed`` grid: ``shape + (21, 43)``.
    """
    pos_embed = getattr(segmentor.backbone, 'pos_embed', None)
    if isinstance(pos_embed, torch.Tensor) and pos_embed.dim() == 4:
        base = 16 * int(pos_embed.shape[1]), 16 * int(pos_embed.shape[2])
    else:
        base = shape
    return base[0] + 21, base[1] + 43


def dynamic_check_sizes(segmentor, shape: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(batch, H, W) the parity check of a ``--dynamic-size`` file runs: ``shape`` (batch 1),
    the trace size (batch 2), ``pos_embed``'s own size (the other branch: multiples of 16, no
    resize) and a small odd size, each once."""
    height, width = shape
    trace = dynamic_trace_size(segmentor, shape)
    own = trace[0] - 21, trace[1] - 43
    sizes = [(1, height, width), (2, *trace), (1, *own),
             (1, max(1, height // 2 + 3), max(1, width // 3 + 5))]
    unique = []
    for size in sizes:
        if size[1:] not in [seen[1:] for seen in unique]:
            unique.append(size)
    return unique


def export_failure(error: BaseException) -> str:
    """The useful line of an exporter error (its summary, not the generic preamble)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if '## Exception summary' in lines:
        after = lines[lines.index('## Exception summary') + 1:]
        if after:
            return after[0][:300]
    return first_line(error, 300)


def foreign_ops(model_proto) -> list[str]:
    """Nodes outside the standard ONNX domains (e.g. an un-decomposed custom op)."""
    standard = {'', 'ai.onnx', 'ai.onnx.ml'}
    functions = {(function.domain, function.name) for function in model_proto.functions}
    return sorted({f'{node.domain}::{node.op_type}' for node in model_proto.graph.node
                   if node.domain not in standard
                   and (node.domain, node.op_type) not in functions})


def ort_session(path: str, threads: int | None = None, after: str = '; nothing written'):
    """An onnxruntime CPU session on ``path``; a graph it cannot load is one line (exit 1)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    except Exception as error:  # noqa: BLE001 - onnxruntime's own error types
        raise UsageError(f'onnxruntime {ort.__version__} cannot load the exported graph: '
                         f'{first_line(error, 300)}{after} (try an older --opset?)',
                         exit_code=1) from None


def parity(session, module, inputs: list) -> float:
    """Max abs difference between onnxruntime and PyTorch logits over ``inputs``."""
    worst = 0.0
    for images in inputs:
        with torch.no_grad():
            expected = module(images).numpy()
        try:
            (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
        except Exception as error:  # noqa: BLE001 - onnxruntime's own error types
            raise UsageError(f'onnxruntime cannot run the exported graph at '
                             f'{shape_text(images)}: {first_line(error, 300)}',
                             exit_code=1) from None
        if actual.shape != expected.shape:
            raise UsageError(f'onnxruntime returned {tuple(actual.shape)} for '
                             f'{shape_text(images)}, PyTorch {tuple(expected.shape)}',
                             exit_code=1)
        worst = max(worst, float(abs(actual - expected).max()))
    return worst


def shape_text(images) -> str:
    return 'x'.join(map(str, images.shape))


def benchmark(session, module, images, repeats: int) -> tuple[float, float]:
    """Median latency (ms) of PyTorch (no_grad) and onnxruntime on ``images``."""
    feed = {INPUT_NAME: images.numpy()}

    def run_torch():
        with torch.no_grad():
            module(images)

    def run_ort():
        session.run([OUTPUT_NAME], feed)

    return median_ms(run_torch, repeats), median_ms(run_ort, repeats)


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


# ------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_numbers(args)
    inputs = [args.config] + ([args.checkpoint] if args.checkpoint else [])
    check_out(args.out, inputs)
    if args.checkpoint is not None and not osp.isfile(args.checkpoint):
        raise UsageError(f'checkpoint {args.checkpoint} not found')
    packages = check_deploy_packages()
    newest = packages['onnx'].defs.onnx_opset_version()
    if args.opset > newest:
        raise UsageError(f'--opset {args.opset}: the installed onnx '
                         f'{packages["onnx"].__version__} knows opsets up to {newest}')
    cfg = load_config(args.config, args.cfg_options)
    check_seg_config(cfg, args.config, 'infer')
    check_arch(cfg)
    height, width = tuple(args.shape) if args.shape else default_shape(cfg)

    segmentor = build_segmentor(cfg, args.checkpoint, args.trust)
    module = SegmentorLogits(segmentor).eval()
    size = model_bytes(module)
    if size >= PROTOBUF_LIMIT:
        raise UsageError(f'the model holds {size / 2 ** 30:.1f} GiB of weights: over the 2 GiB '
                         'a single .onnx file can hold (external data is not supported here)')
    configured = (cfg.model.get('backbone') or {}).get('outlook_impl') \
        or os.environ.get(IMPL_ENV_VAR) or 'auto'
    generator = torch.Generator().manual_seed(0)
    channels = in_channels(segmentor)
    dynamic_size = args.dynamic_size
    batched = args.dynamic or dynamic_size
    if dynamic_size:
        checks = dynamic_check_sizes(segmentor, (height, width))
        example_size = (2, *dynamic_trace_size(segmentor, (height, width)))
    else:
        checks = [(batch, height, width) for batch in PARITY_BATCHES[args.dynamic]]
        example_size = (2 if args.dynamic else 1, height, width)
    parity_inputs = [torch.randn(batch, channels, h, w, generator=generator)
                     for batch, h, w in checks]
    example = torch.randn(example_size[0], channels, *example_size[1:], generator=generator)
    dims = 'HxW' if dynamic_size else f'{height}x{width}'
    print(f'[mmvolo] exporting {osp.basename(args.config)} '
          f'({args.checkpoint or "random weights"}): input {"B" if batched else 1}'
          f'x{channels}x{dims}, opset {args.opset}, outlook attention '
          f"'{EXPORT_IMPL}' in the graph (PyTorch here: '{configured}')", flush=True)
    start = time.perf_counter()
    program = export(module, example, args.dynamic, args.opset, dynamic_size=dynamic_size)
    seconds = time.perf_counter() - start
    shape_words = ('H, W' if dynamic_size else f'{height}, {width}')
    program.model.metadata_props.update(
        metadata(cfg, args.config, segmentor, f'{INPUT_NAME} (B, {channels}, {shape_words}) '
                 'float32, normalised', size=(height, width), opset=args.opset,
                 dynamic=batched, dynamic_size=dynamic_size))
    with atomic_path(args.out) as tmp:
        program.save(tmp, external_data=False)
        unknown = foreign_ops(packages['onnx'].load(tmp, load_external_data=False))
        if unknown:
            raise UsageError(f'the exported graph holds ops onnxruntime does not know: '
                             f'{", ".join(unknown)}; nothing written', exit_code=1)
        session = ort_session(tmp)
        diff = parity(session, module, parity_inputs)
        checked = ', '.join(shape_text(images) for images in parity_inputs)
        if diff > args.tolerance:
            raise UsageError(f'onnxruntime differs from PyTorch by {diff:.3g} (max abs, at '
                             f'{checked}) > --tolerance {args.tolerance:g}; nothing written',
                             exit_code=1)
    for note in runtime_notes(program.model.metadata_props, (height, width), dynamic_size):
        print(f'note: {note}')
    megabytes = osp.getsize(args.out) / 2 ** 20
    print(f'wrote {args.out} ({megabytes:.1f} MiB, exported in {seconds:.1f} s); input '
          f'{INPUT_NAME} {"B" if batched else 1}x{channels}x{dims} float32 '
          f'normalised as the config\'s data_preprocessor does, output {OUTPUT_NAME} '
          f'{"B" if batched else 1}x{segmentor.decode_head.num_classes}x{dims}')
    print(f'onnxruntime vs PyTorch: max abs diff {diff:.3g} at {checked} (tolerance '
          f'{args.tolerance:g})')
    if args.benchmark:
        threads = torch.get_num_threads()
        session = ort_session(args.out, threads, after='')
        torch_ms, ort_ms = benchmark(session, module, parity_inputs[0], args.benchmark)
        print(f'latency at {shape_text(parity_inputs[0])}, median of {args.benchmark} runs, '
              f'{threads} threads: PyTorch {torch_ms:.1f} ms, onnxruntime (CPU) {ort_ms:.1f} ms')

