"""``OnnxSegmentor``: an mmvolo ONNX export run on images as mmseg's ``inference_model`` does.

Per image (H, W, 3) uint8 BGR, with the settings recorded in the file's metadata:

1. the config's test ``Resize`` (mmcv semantics; keep-ratio: :func:`.preprocess.rescale_size`);
2. BGR->RGB if the data_preprocessor does it, ``(x - mean) / std`` in float32;
3. the data_preprocessor's test padding (``test_cfg`` size or size_divisor; right/bottom,
   ``pad_val``), as mmseg's ``stack_batch``;
4. ``test_cfg.mode`` 'whole': a fixed-size file: padded further to the exported size; a
   dynamic-size file (``--dynamic-size``): as it is; one forward pass;
   'slide': mmseg's window grid (:func:`.windows.slide_windows`), windows of the crop size
   (a fixed-size file: = the exported size; windows clipped by a smaller image padded to it)
   run in batches when the file's batch dimension is dynamic, logits summed and divided by the
   window count as mmseg does;
5. the padding cropped off, logits resized to (H, W) bilinearly (``align_corners`` of the
   head; :func:`.interpolate.resize_bilinear`), argmax (sigmoid > threshold for one channel).

mmseg runs the model on the padded image's own size, and so does a dynamic-size file (always
``exact``); a fixed-size file runs at the exported size. The
two agree exactly when :meth:`OnnxSegmentor.plan` says ``exact``: in 'whole' mode when the
padded image is the exported size (e.g. the config pads to it: data_preprocessor
``test_cfg=dict(size=...)``), in 'slide' mode when the padded image is at least one crop in
each dimension. Otherwise the graph sees extra padding (``pad_val``) and the logits differ
near it.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import UsageError
from .interpolate import resize_bilinear
from .metadata import INTERPOLATIONS, MetadataError, ModelInfo, from_props
from .preprocess import normalise, pad_to, resize_image, resized_shape, test_padded_shape
from .windows import slide_windows

Pair = tuple[int, int]


@dataclass(frozen=True)
class Plan:
    """The sizes (H, W) one image goes through: ``original`` -> ``resized`` (test Resize) ->
    ``padded`` (data_preprocessor test padding: what mmseg's model runs on); ``exact``: the
    graph runs on that same input (see the module docstring)."""

    original: Pair
    resized: Pair
    padded: Pair
    exact: bool


class OnnxSegmentor:
    """An mmvolo ONNX export with its metadata, on onnxruntime.

    Args:
        model_path: the ``.onnx`` file written by ``tools/deploy/export_onnx.py``.
        providers: onnxruntime execution providers (default: all available, in
            onnxruntime's order of preference).
        threads: onnxruntime intra-op threads (default: onnxruntime's).
        window_batch: sliding windows per forward pass when the file's batch dimension is
            dynamic (``--dynamic``); 1 otherwise.
    """

    def __init__(self, model_path: str, providers: Sequence[str] | None = None,
                 threads: int | None = None, window_batch: int = 4) -> None:
        self.path = str(model_path)
        self.session = _session(self.path, providers, threads)
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            self.info: ModelInfo = from_props(props, self.path)
        except MetadataError as error:
            raise UsageError(str(error)) from None
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.output_name = self.session.get_outputs()[0].name
        self.dynamic_batch = not isinstance(graph_input.shape[0], int)
        self.window_batch = max(1, int(window_batch)) if self.dynamic_batch else 1
        self.channels = int(graph_input.shape[1])
        #: H and W of the graph are dynamic (``--dynamic-size``): any image size runs as is
        self.dynamic_size = not all(isinstance(dim, int) for dim in graph_input.shape[2:])
        #: the fixed (H, W) of the graph; None for a dynamic-size file
        self.input_size: Pair | None = None if self.dynamic_size else (
            int(graph_input.shape[2]), int(graph_input.shape[3]))
        _check_supported(self.info, self.input_size, self.path)

    # ------------------------------------------------------------------------ planning
    def plan(self, height: int, width: int, source: str = 'the image') -> Plan:
        """The sizes an ``height x width`` image goes through; one-line :class:`UsageError`
        when it cannot run (resized to nothing, or larger than a whole-mode graph)."""
        info = self.info
        resized = resized_shape(height, width, info.resize)
        if min(resized) < 1:
            raise UsageError(f'{source} is {height}x{width} (HxW): the config\'s test Resize '
                             f'(scale {info.resize.scale}, keep_ratio) makes it '
                             f'{resized[0]}x{resized[1]}; crop it to a less extreme aspect ratio')
        padded = test_padded_shape(*resized, info.test_pad_size, info.test_pad_divisor)
        size = self.input_size
        if size is None:  # a dynamic-size file runs what mmseg runs
            return Plan((height, width), resized, padded, True)
        if info.mode == 'whole':
            if padded[0] > size[0] or padded[1] > size[1]:
                raise UsageError(
                    f'{source} is {height}x{width} (HxW), {padded[0]}x{padded[1]} after the '
                    f"config's test resize and padding: larger than the {size[0]}x{size[1]} "
                    f'this file was exported at (whole-image mode, fixed size); export with '
                    f'--shape {max(padded[0], size[0])} {max(padded[1], size[1])} (or '
                    '--dynamic-size: every size)')
            exact = padded == size
        else:
            exact = padded[0] >= size[0] and padded[1] >= size[1]
        return Plan((height, width), resized, padded, exact)

    # ------------------------------------------------------------------------ inference
    def predict(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 BGR -> labels (H, W) (uint8, uint16 beyond 256 classes) and
        logits (out_channels, H, W) float32, as mmseg's inference of the exported config."""
        image = self._checked_image(image_bgr)
        plan = self.plan(*image.shape[:2])
        info = self.info
        data = normalise(resize_image(image, info.resize), info.mean, info.std,
                         info.bgr_to_rgb)
        data = pad_to(data, *plan.padded, info.pad_val)
        if info.mode == 'whole':
            if self.input_size is not None:
                data = pad_to(data, *self.input_size, info.pad_val)
            logits = self._run(data[None])[0]
        else:
            logits = self._slide(data)
        logits = logits[:, :plan.resized[0], :plan.resized[1]]
        logits = np.ascontiguousarray(resize_bilinear(logits, *plan.original,
                                                      info.align_corners))
        return self._labels(logits), logits

    def _slide(self, data: np.ndarray) -> np.ndarray:
        """(C, H, W) normalised -> (out_channels, H, W): mmseg's ``slide_inference``."""
        _, height, width = data.shape
        windows = slide_windows(height, width, self.info.crop_size, self.info.stride)
        # a fixed file pads a clipped window to its size; a dynamic one runs it as mmseg does
        # (clipped windows all have the same size: the image's, in that dimension)
        preds = np.zeros((self.info.out_channels, height, width), np.float32)
        count = np.zeros((1, height, width), np.float32)
        for y1, y2, x1, x2 in windows:
            count[:, y1:y2, x1:x2] += 1
        for start in range(0, len(windows), self.window_batch):
            chunk = windows[start:start + self.window_batch]
            crops = np.stack([self._window(data[:, y1:y2, x1:x2]) for y1, y2, x1, x2 in chunk])
            for logits, (y1, y2, x1, x2) in zip(self._run(crops), chunk):
                preds[:, y1:y2, x1:x2] += logits[:, :y2 - y1, :x2 - x1]
        return preds / count

    def _window(self, crop: np.ndarray) -> np.ndarray:
        """A window (C, h, w) as the graph takes it: padded to a fixed file's size."""
        if self.input_size is None:
            return crop
        return pad_to(crop, *self.input_size, self.info.pad_val)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """(B, C, h, w) float32 (the exported size of a fixed file) -> (B, out_channels, h, w)."""
        try:
            (logits,) = self.session.run([self.output_name], {self.input_name: batch})
        except Exception as error:  # noqa: BLE001 - onnxruntime's own error types
            raise UsageError(f'onnxruntime cannot run {self.path} on a batch of shape '
                             f'{"x".join(map(str, batch.shape))}: {_first_line(error)}',
                             exit_code=1) from None
        return logits

    def _labels(self, logits: np.ndarray) -> np.ndarray:
        dtype = np.uint8 if max(self.info.num_classes, 2) <= 256 else np.uint16
        if logits.shape[0] > 1:
            return np.argmax(logits, axis=0).astype(dtype)
        threshold = 0.3 if self.info.threshold is None else self.info.threshold
        return (1 / (1 + np.exp(-logits[0])) > threshold).astype(dtype)

    def _checked_image(self, image) -> np.ndarray:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                or image.shape[2] != self.channels:
            got = (f'{image.dtype} array of shape {image.shape}' if isinstance(image, np.ndarray)
                   else type(image).__name__)
            raise UsageError(f'predict() takes an (H, W, {self.channels}) uint8 BGR image (as '
                             f'cv2.imread(path, cv2.IMREAD_COLOR) returns), got {got}')
        return image


def _session(path: str, providers: Sequence[str] | None, threads: int | None):
    """An onnxruntime session on ``path``; a missing or unloadable file is one line."""
    import onnxruntime as ort

    if not os.path.isfile(path):
        raise UsageError(f'model {path} not found')
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(path, options,
                                    providers=list(providers or ort.get_available_providers()))
    except Exception as error:  # noqa: BLE001 - onnxruntime's own error types
        raise UsageError(f'onnxruntime {ort.__version__} cannot load {path}: '
                         f'{_first_line(error)} (is it an .onnx file from '
                         'tools/deploy/export_onnx.py?)') from None


def _check_supported(info: ModelInfo, input_size: Pair | None, path: str) -> None:
    """Refuse a file whose recorded pipeline this runtime cannot reproduce (one line)."""
    if info.unsupported:
        raise UsageError(f'{path}: {info.unsupported}; the runtime cannot reproduce that config '
                         "(run tools/inference.py with the checkpoint instead)")
    if info.resize is not None and info.resize.interpolation not in INTERPOLATIONS:
        raise UsageError(f'{path}: test Resize interpolation {info.resize.interpolation!r} is '
                         f'not one of {", ".join(INTERPOLATIONS)}')
    if info.mode not in ('whole', 'slide'):
        raise UsageError(f"{path}: test_cfg mode {info.mode!r} is not 'whole' or 'slide'")
    if info.mode == 'slide' and input_size is not None and tuple(info.crop_size) != input_size:
        raise UsageError(f'{path} was exported at {input_size[0]}x{input_size[1]} but the config '
                         f'slides {info.crop_size[0]}x{info.crop_size[1]} windows: export with '
                         f'--shape {info.crop_size[0]} {info.crop_size[1]} (or --dynamic-size)')


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:limit]

