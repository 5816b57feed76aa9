"""The metadata an mmvolo ONNX export carries (``metadata_props``), read and written here.

The exporter (:mod:`mmvolo.deploy.onnx_export`) fills a :class:`ModelInfo` from the config
and writes it with :func:`to_props`; the runtime reads it back with :func:`from_props` from
``onnxruntime.InferenceSession(...).get_modelmeta().custom_metadata_map``. All values are
strings: JSON for the keys added in version 1; the keys of the first exports
(``preprocess_mean``/``_std`` as a Python list, ``preprocess_bgr_to_rgb`` as ``True``/``False``,
``num_classes``, ``mmvolo_config``) keep their format.

:data:`METADATA_VERSION` is raised whenever a key changes meaning or a runtime would need a new
one to reproduce the model; a runtime refuses files newer than it knows and reads every older
version. Version 2 added ``dynamic_size`` (H and W of the graph are dynamic; a version-1
runtime would misread such a graph) and ``outlook_impl`` as a field (the key existed as text);
a version-1 file reads as ``dynamic_size=False``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

#: The version of the metadata format written by this mmvolo (``mmvolo_metadata_version``).
METADATA_VERSION = 2
VERSION_KEY = 'mmvolo_metadata_version'
#: The transforms of a test pipeline the runtime reproduces (others make it refuse the file).
KNOWN_TRANSFORMS = ('LoadImageFromFile', 'LoadAnnotations', 'Resize', 'PackSegInputs')
#: mmcv's interpolation names -> OpenCV's flags (cv2.INTER_*), as mmcv.imresize maps them.
INTERPOLATIONS = {'nearest': 0, 'bilinear': 1, 'bicubic': 2, 'area': 3, 'lanczos': 4}

Pair = tuple[int, int]


@dataclass(frozen=True)
class ResizeStep:
    """The test pipeline's mmcv ``Resize``: ``scale`` is (w, h) as mmcv has it; with
    ``keep_ratio`` only its long and short sides matter (mmcv's ``rescale_size``)."""

    scale: Pair
    keep_ratio: bool
    interpolation: str = 'bilinear'


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to reproduce mmseg's inference of the exported config.

    Sizes are (H, W) unless named otherwise. ``out_channels`` is the graph's logits channels
    (``num_classes``, or 1 for a sigmoid head thresholded at ``threshold``). ``input_size`` is
    the graph's fixed size, or with ``dynamic_size`` the size it was checked at.
    """

    config: str
    mmvolo_version: str
    opset: int
    input_size: Pair
    dynamic_batch: bool
    num_classes: int
    out_channels: int
    threshold: float | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bgr_to_rgb: bool
    pad_val: float
    seg_pad_val: float
    test_pad_size: Pair | None
    test_pad_divisor: int | None
    resize: ResizeStep | None
    mode: str
    crop_size: Pair | None
    stride: Pair | None
    align_corners: bool
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    unsupported: str | None = None
    dynamic_size: bool = False
    outlook_impl: str | None = None
    version: int = METADATA_VERSION


def to_props(info: ModelInfo) -> dict[str, str]:
    """``info`` as metadata_props strings (see the module docstring for the formats)."""
    resize = None if info.resize is None else {
        'scale': list(info.resize.scale), 'keep_ratio': info.resize.keep_ratio,
        'interpolation': info.resize.interpolation}
    test_cfg = {'mode': info.mode}
    if info.mode == 'slide':
        test_cfg.update(crop_size=list(info.crop_size), stride=list(info.stride))
    values = {
        VERSION_KEY: info.version, 'mmvolo_version': info.mmvolo_version,
        'opset': info.opset, 'input_size': list(info.input_size),
        'dynamic_batch': info.dynamic_batch, 'out_channels': info.out_channels,
        'threshold': info.threshold, 'preprocess_pad_val': info.pad_val,
        'preprocess_seg_pad_val': info.seg_pad_val,
        'preprocess_test_pad': None if info.test_pad_size is None and info.test_pad_divisor is None
        else {'size': None if info.test_pad_size is None else list(info.test_pad_size),
              'size_divisor': info.test_pad_divisor},
        'test_resize': resize, 'test_cfg': test_cfg, 'align_corners': info.align_corners,
        'classes': list(info.classes), 'palette': [list(color) for color in info.palette],
        'runtime_unsupported': info.unsupported, 'dynamic_size': info.dynamic_size}
    props = {key: json.dumps(value) for key, value in values.items()}
    if info.outlook_impl is not None:
        props['outlook_impl'] = info.outlook_impl
    props.update({'mmvolo_config': info.config, 'num_classes': str(info.num_classes),
                  'preprocess_mean': str(list(info.mean)), 'preprocess_std': str(list(info.std)),
                  'preprocess_bgr_to_rgb': str(bool(info.bgr_to_rgb))})
    return props


def check_version(props: Mapping[str, str], source: str) -> int:
    """The file's metadata version; one line when it is missing or newer than this runtime."""
    if VERSION_KEY not in props:
        if 'mmvolo_config' in props:
            raise MetadataError(f'{source} was exported by an older mmvolo without the runtime '
                                'metadata: export it again with tools/deploy/export_onnx.py')
        raise MetadataError(f'{source} holds no mmvolo metadata (not written by '
                            'tools/deploy/export_onnx.py): export the model with that tool')
    try:
        version = int(props[VERSION_KEY])
    except ValueError:
        raise MetadataError(f'{source}: {VERSION_KEY} {props[VERSION_KEY]!r} is not an integer; '
                            'export the model again with tools/deploy/export_onnx.py') from None
    if version > METADATA_VERSION:
        raise MetadataError(f'{source} has metadata version {version}, this runtime knows up to '
                            f'{METADATA_VERSION}: upgrade mmvolo (pip install -U '
                            "'mmvolo[deploy-runtime]')")
    return version


def from_props(props: Mapping[str, str], source: str) -> ModelInfo:
    """The :class:`ModelInfo` of a file's metadata; :class:`MetadataError` (one line) if the
    file is no mmvolo export, is newer than this runtime, or a key is missing or malformed."""
    version = check_version(props, source)
    try:
        return _model_info(_Reader(props, source), version)
    except (KeyError, TypeError, ValueError, IndexError) as error:
        if isinstance(error, MetadataError):
            raise
        raise MetadataError(f'{source}: malformed mmvolo metadata ({type(error).__name__}: '
                            f'{error}); export the model again with tools/deploy/export_onnx.py'
                            ) from None


def _model_info(reader: _Reader, version: int) -> ModelInfo:
    resize = reader.json('test_resize')
    test_cfg = reader.json('test_cfg')
    pad = reader.json('preprocess_test_pad') or {}
    return ModelInfo(
        config=reader.text('mmvolo_config'), mmvolo_version=str(reader.json('mmvolo_version')),
        opset=int(reader.json('opset')), input_size=_pair(reader.json('input_size')),
        dynamic_batch=bool(reader.json('dynamic_batch')),
        num_classes=int(reader.text('num_classes')),
        out_channels=int(reader.json('out_channels')), threshold=reader.json('threshold'),
        mean=tuple(map(float, reader.json('preprocess_mean'))),
        std=tuple(map(float, reader.json('preprocess_std'))),
        bgr_to_rgb=reader.text('preprocess_bgr_to_rgb') == 'True',
        pad_val=float(reader.json('preprocess_pad_val')),
        seg_pad_val=float(reader.json('preprocess_seg_pad_val')),
        test_pad_size=_pair(pad.get('size')), test_pad_divisor=pad.get('size_divisor'),
        resize=None if resize is None else ResizeStep(
            _pair(resize['scale']), bool(resize['keep_ratio']),
            resize.get('interpolation', 'bilinear')),
        mode=test_cfg['mode'], crop_size=_pair(test_cfg.get('crop_size')),
        stride=_pair(test_cfg.get('stride')), align_corners=bool(reader.json('align_corners')),
        classes=tuple(reader.json('classes')),
        palette=tuple(tuple(int(v) for v in color) for color in reader.json('palette')),
        unsupported=reader.json('runtime_unsupported'),
        dynamic_size=bool(reader.json('dynamic_size')) if version >= 2 else False,
        outlook_impl=reader.props.get('outlook_impl'), version=version)


class MetadataError(ValueError):
    """A file's metadata is missing, newer than this runtime, or malformed (one line)."""


class _Reader:
    """Reads keys of ``props``; a missing or malformed one is a :class:`MetadataError`."""

    def __init__(self, props: Mapping[str, str], source: str) -> None:
        self.props, self.source = props, source

    def text(self, key: str) -> str:
        if key not in self.props:
            raise MetadataError(f'{self.source}: metadata key {key!r} is missing; export the '
                                'model again with tools/deploy/export_onnx.py')
        return self.props[key]

    def json(self, key: str):
        try:
            return json.loads(self.text(key))
        except json.JSONDecodeError:
            raise MetadataError(f'{self.source}: metadata key {key!r} is not valid JSON '
                                f'({self.props[key][:60]!r}); export the model again') from None


def _pair(value) -> Pair | None:
    return None if value is None else (int(value[0]), int(value[1]))
