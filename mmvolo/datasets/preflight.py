"""Pre-flight check of a config's segmentation datasets, before any model is built.

The file lists are mmseg's own: each dataset config is built by mmseg's ``DATASETS`` with an
empty pipeline and ``lazy_init=True``, and its ``load_data_list()`` gives the (image, label
map) pairs the DataLoader would read. Then, per split (one dataset config):

- every file: present, paired (a label map for every image), non-empty and an image (its
  first bytes, or PIL's header parse for unusual formats);
- ``sample`` pairs (all with ``sample=None``): the image's size from its header, the label
  map decoded as mmseg's ``LoadAnnotations`` decodes it (PIL, ``unchanged``), sizes compared,
  the stored values mapped through ``reduce_zero_label`` / ``label_map`` and compared with
  the model's ``num_classes`` and ``ignore_index``;
- the pipeline's ``LoadAnnotations(reduce_zero_label=...)`` against the dataset's.

Every problem is one :attr:`SplitReport.findings` line that names the fix. Nothing here
raises on bad data; :func:`mmvolo.cli.check_data_files` turns the first finding into the
tools' one-line error, ``tools/misc/check_dataset.py`` prints the whole report.
"""
from __future__ import annotations

import copy
import os
import os.path as osp
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: How the image formats OpenCV and PIL read start (PIL parses any other file's header).
IMAGE_SIGNATURES = (b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n', b'BM', b'II*\x00', b'MM\x00*',
                    b'GIF87a', b'GIF89a')
#: Label maps read per split by the tools' pre-flight check.
PREFLIGHT_SAMPLE = 16
#: The suffix mmseg's CityscapesDataset expects, and what the download has instead.
TRAIN_IDS_SUFFIX = '_gtFine_labelTrainIds.png'
DOWNLOAD_SUFFIXES = ('_gtFine_polygons.json', '_gtFine_labelIds.png')


@dataclass
class SplitReport:
    """What was found in one dataset config (``where``: its config key)."""
    where: str
    dataset_type: str = '?'
    img_dir: str = ''
    seg_dir: str | None = None
    img_suffix: str = ''
    seg_map_suffix: str = ''
    reduce_zero_label: bool = False
    num_classes: int = 0
    ignore_index: int = 255
    images: int = 0
    paired: int = 0
    files_checked: int = 0
    labels_read: int = 0
    sizes_agree: int = 0
    values: set[int] = field(default_factory=set)
    also: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings


def check_datasets(cfg: Any, dataloaders: Sequence[str],
                   sample: int | None = PREFLIGHT_SAMPLE,
                   decode_images: bool = False) -> list[SplitReport]:
    """Check the datasets of ``cfg[key].dataset`` for each key in ``dataloaders``.

    Args:
        cfg: an mmengine Config (``custom_imports`` are imported, for custom datasets).
        sample: label maps read per split; None reads all of them.
        decode_images: decode the images of the pairs read (OpenCV, as mmcv's
            LoadImageFromFile) instead of reading their size from the header.

    Returns:
        One report per distinct leaf dataset config (wrappers and concatenations unwrapped;
        a dataset config shared by several loaders is checked once).
    """
    _import_dataset_modules(cfg)
    model = cfg.get('model') or {}
    reports: list[SplitReport] = []
    seen: dict[str, SplitReport] = {}
    for key in dataloaders:
        loader = cfg.get(key)
        if not isinstance(loader, dict) or not isinstance(loader.get('dataset'), dict):
            continue
        for where, dataset in leaf_datasets(loader['dataset'], f'{key}.dataset'):
            identity = repr(sorted((k, repr(v)) for k, v in dataset.items()))
            if identity in seen:
                seen[identity].also.append(where)
                continue
            seen[identity] = check_split(where, dataset, model, sample, decode_images)
            reports.append(seen[identity])
    return reports


def leaf_datasets(dataset: dict, where: str) -> Iterator[tuple[str, dict]]:
    """The leaf dataset configs of a (possibly wrapped/concatenated) dataset config."""
    if isinstance(dataset.get('dataset'), dict):  # RepeatDataset, MultiImageMixDataset, ...
        yield from leaf_datasets(dataset['dataset'], f'{where}.dataset')
    elif isinstance(dataset.get('datasets'), (list, tuple)):  # ConcatDataset
        for index, child in enumerate(dataset['datasets']):
            if isinstance(child, dict):
                yield from leaf_datasets(child, f'{where}.datasets.{index}')
    else:
        yield where, dataset


def check_split(where: str, dataset_cfg: dict, model_cfg: dict,
                sample: int | None = PREFLIGHT_SAMPLE,
                decode_images: bool = False) -> SplitReport:
    """Check one leaf dataset config (see the module docstring)."""
    start = time.perf_counter()
    report = SplitReport(where=where, dataset_type=_type_name(dataset_cfg.get('type')))
    try:
        dataset, data_list = build_file_list(dataset_cfg)
    except Exception as error:  # whatever the dataset class raises while listing
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        report.findings.append(f'{where} ({report.dataset_type}) cannot list its files: '
                               f'{message}; fix its data_root / data_prefix / ann_file')
        return report
    _describe(report, dataset, model_cfg)
    _check_pipeline(report, dataset_cfg)
    if not data_list:
        report.findings.append(_no_images(report))
    else:
        loads_labels = loads_annotations(dataset_cfg.get('pipeline'))
        pairs = [(info['img_path'], info.get('seg_map_path') if loads_labels else None)
                 for info in data_list]
        _check_files(report, pairs, getattr(dataset, 'label_map', None), sample,
                     decode_images)
    report.seconds = time.perf_counter() - start
    return report


def loads_annotations(pipeline: Any) -> bool:
    """Whether a pipeline (TestTimeAug's nested lists included) loads label maps; one that
    does not (inference-only test sets) needs none."""
    if isinstance(pipeline, dict):
        return 'LoadAnnotations' in _type_name(pipeline.get('type')) or any(
            loads_annotations(value) for value in pipeline.values()
            if isinstance(value, (list, tuple, dict)))
    if isinstance(pipeline, (list, tuple)):
        return any(loads_annotations(item) for item in pipeline)
    return False


def build_file_list(dataset_cfg: dict) -> tuple[Any, list[dict]]:
    """(dataset object, its ``load_data_list()``), built by mmseg with no pipeline and no
    file read beyond the listing."""
    from mmseg.registry import DATASETS

    cfg = copy.deepcopy(dict(dataset_cfg))
    cfg.update(pipeline=[], lazy_init=True, serialize_data=False)
    dataset = DATASETS.build(cfg)
    return dataset, dataset.load_data_list()


def _describe(report: SplitReport, dataset: Any, model_cfg: dict) -> None:
    prefix = getattr(dataset, 'data_prefix', {}) or {}
    report.img_dir = prefix.get('img_path', '')
    report.seg_dir = prefix.get('seg_map_path')
    report.img_suffix = getattr(dataset, 'img_suffix', '')
    report.seg_map_suffix = getattr(dataset, 'seg_map_suffix', '')
    report.reduce_zero_label = bool(getattr(dataset, 'reduce_zero_label', False))
    head = model_cfg.get('decode_head') if isinstance(model_cfg, dict) else None
    head = head[-1] if isinstance(head, (list, tuple)) and head else head
    head = head if isinstance(head, dict) else {}
    classes = (getattr(dataset, 'metainfo', None) or {}).get('classes') or ()
    num_classes = head.get('num_classes')
    report.num_classes = num_classes if isinstance(num_classes, int) else len(classes)
    report.ignore_index = int(head.get('ignore_index', 255))


def _check_pipeline(report: SplitReport, dataset_cfg: dict) -> None:
    """mmseg's LoadAnnotations asserts its ``reduce_zero_label`` equals the dataset's."""
    for transform in dataset_cfg.get('pipeline') or ():
        if not isinstance(transform, dict) or transform.get('type') != 'LoadAnnotations':
            continue
        value = transform.get('reduce_zero_label')
        if value is not None and bool(value) != report.reduce_zero_label:
            report.findings.append(
                f"{report.where}.pipeline: LoadAnnotations(reduce_zero_label={value}) but the "
                f'dataset has reduce_zero_label={report.reduce_zero_label} (mmseg requires '
                'them equal): drop it from LoadAnnotations or set the dataset\'s to match')


def _check_files(report: SplitReport, pairs: list[tuple[str, str | None]],
                 label_map: dict | None, sample: int | None, decode_images: bool) -> None:
    report.images = len(pairs)
    has_image = [osp.isfile(img) for img, _ in pairs]
    has_label = [seg is None or osp.isfile(seg) for _, seg in pairs]
    missing_images = [img for (img, _), ok in zip(pairs, has_image) if not ok]
    unpaired = [pair for pair, ok in zip(pairs, has_label) if not ok]
    present = [pair for pair, ok_img, ok_seg in zip(pairs, has_image, has_label)
               if ok_img and ok_seg]
    report.paired = sum(seg is not None for _, seg in present)
    existing = [img for (img, _), ok in zip(pairs, has_image) if ok]
    existing += [seg for _, seg in present if seg is not None]
    report.files_checked = len(existing)
    bad = [(path, why) for path in existing if (why := image_file_problem(path))]
    if bad:
        report.findings.append(
            f'{len(bad)} of {report.files_checked} files are not readable images, e.g. '
            f'{bad[0][0]} ({bad[0][1]}): remove or replace them (in {osp.dirname(bad[0][0])})')
    if missing_images:
        report.findings.append(
            f'{len(missing_images)} of {len(pairs)} images listed for {report.where} are '
            f'missing, e.g. {missing_images[0]}: restore them or fix ann_file / data_prefix')
    if unpaired:
        report.findings.append(_unpaired(report, unpaired))
    bad_paths = {path for path, _ in bad}
    readable = [(img, seg) for img, seg in present
                if seg is not None and img not in bad_paths and seg not in bad_paths]
    _check_label_maps(report, _sample(readable, sample), label_map, decode_images)


def _unpaired(report: SplitReport, unpaired: list[tuple[str, str]]) -> str:
    img, seg = unpaired[0]
    count = f'{len(unpaired)} of {report.images} images'
    if seg.endswith(TRAIN_IDS_SUFFIX):
        stem = seg[:-len(TRAIN_IDS_SUFFIX)]
        downloaded = [suffix for suffix in DOWNLOAD_SUFFIXES if osp.isfile(stem + suffix)]
        if downloaded:
            return (f'{count} in {report.img_dir} lack their *{TRAIN_IDS_SUFFIX} (e.g. {seg}; '
                    f'the download has *{downloaded[0]}): {cityscapes_converter_hint(seg)}')
    return (f'{count} in {report.img_dir} have no annotation, e.g. {img} (expected {seg}): '
            'add the label maps, remove those images, or fix data_prefix.seg_map_path / '
            f"seg_map_suffix ('{report.seg_map_suffix}')")


def cityscapes_converter_hint(seg_path: str) -> str:
    """The converter command for the Cityscapes root above ``.../gtFine/<split>/<city>/``."""
    root = osp.dirname(osp.dirname(osp.dirname(osp.dirname(seg_path)))) or '.'
    return ('make them with mmseg\'s converter: pip install cityscapesscripts (mmvolo\'s '
            f'`cityscapes` extra), then python {converter_path()} {root} --nproc 8 '
            '(docs/datasets.md)')


def converter_path() -> str:
    """mmseg's Cityscapes converter, as shipped inside the installed mmseg package."""
    import mmseg

    return osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', 'dataset_converters',
                    'cityscapes.py')


def image_file_problem(path: str) -> str | None:
    """Why ``path`` is not a readable image file (None if it is): empty, unreadable, or its
    first bytes are no image format's (then PIL's header parse decides)."""
    try:
        with open(path, 'rb') as stream:
            head = stream.read(16)
    except OSError as error:
        return f'unreadable: {error.strerror or error}'
    if not head:
        return 'empty file'
    if head.startswith(IMAGE_SIGNATURES) or (head[:4] == b'RIFF' and head[8:12] == b'WEBP'):
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return None
    except (UnidentifiedImageError, OSError, ValueError):
        return f'not an image: starts with {head[:8]!r}'


def _sample(pairs: list, count: int | None) -> list:
    """``count`` pairs spread evenly over ``pairs`` (all of them for None)."""
    if count is None or len(pairs) <= count:
        return pairs
    indices = np.linspace(0, len(pairs) - 1, count).round().astype(int)
    return [pairs[index] for index in sorted(set(indices.tolist()))]


def _check_label_maps(report: SplitReport, pairs: list[tuple[str, str]],
                      label_map: dict | None, decode_images: bool = False) -> None:
    mismatched: list[str] = []
    undecodable: list[str] = []
    out_of_range: dict[str, set[int]] = {}
    for img, seg in pairs:
        try:
            image_size = decode_image_size(img) if decode_images else read_image_size(img)
            label = read_label_map(seg)
        except Exception as error:  # a damaged file past its header
            undecodable.append(f'{seg} or {img} ({type(error).__name__}: {error})')
            continue
        report.labels_read += 1
        if label.ndim != 2:
            undecodable.append(f'{seg} has {label.shape[2]} channels (a colour picture, not a '
                               'one-channel map of class indices)')
            continue
        label_size = (label.shape[1], label.shape[0])
        if label_size == image_size:
            report.sizes_agree += 1
        else:
            mismatched.append(f'{img} is {_wxh(image_size)} but {seg} is {_wxh(label_size)}')
        values = stored_values(label)
        report.values |= values
        bad = {value for value in values
               if not _valid(effective_value(value, report.reduce_zero_label, label_map),
                             report)}
        if bad:
            out_of_range[seg] = bad
    if undecodable:
        report.findings.append(f'{len(undecodable)} of {len(pairs)} label maps read cannot be '
                               f'used: {undecodable[0]}: replace them')
    if mismatched:
        report.findings.append(
            f'{len(mismatched)} of {len(pairs)} image/label pairs read differ in size, e.g. '
            f'{mismatched[0]}: a label map must have its image\'s size (fix or remove the pair)')
    if out_of_range:
        report.findings.append(_out_of_range(report, out_of_range, label_map))


def read_image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header (PIL; no pixel is decoded)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def decode_image_size(path: str) -> tuple[int, int]:
    """(width, height) of the decoded image (OpenCV, as mmcv's LoadImageFromFile)."""
    import cv2

    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError('OpenCV cannot decode it')
    return image.shape[1], image.shape[0]


def read_label_map(path: str) -> np.ndarray:
    """The label map as mmseg's LoadAnnotations reads it (PIL, unchanged: palette indices of
    'P' PNGs, 16-bit values kept here so that values above 255 can be reported)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


def stored_values(label: np.ndarray) -> set[int]:
    """The distinct values of a label map."""
    if label.dtype == np.uint8:  # a 256-entry table: faster than bincount or unique
        seen = np.zeros(256, bool)
        seen[label.ravel()] = True
        return set(np.flatnonzero(seen).tolist())
    return set(np.unique(label).tolist())


def effective_value(value: int, reduce_zero_label: bool, label_map: dict | None) -> int:
    """What mmseg's LoadAnnotations turns a stored value into (-1: beyond uint8, which it
    would wrap)."""
    if not 0 <= value <= 255:
        return -1
    if reduce_zero_label:
        value = 255 if value in (0, 255) else value - 1
    if label_map:
        value = label_map.get(value, value)
    return value


def _valid(value: int, report: SplitReport) -> bool:
    return 0 <= value < report.num_classes or value == report.ignore_index


def _out_of_range(report: SplitReport, bad: dict[str, set[int]],
                  label_map: dict | None) -> str:
    values = set().union(*bad.values())
    reduced = {effective_value(value, report.reduce_zero_label, label_map) for value in values}
    reduced.discard(-1)
    after = f'; {format_values(reduced)} after it' if report.reduce_zero_label and reduced else ''
    return (f'{len(bad)} of {report.labels_read} label maps read in {report.seg_dir} hold '
            f'values outside the config\'s {report.num_classes} classes, e.g. '
            f'{next(iter(bad))}: stored {format_values(values)} (reduce_zero_label='
            f'{report.reduce_zero_label}{after}; valid: 0-{report.num_classes - 1} and ignore '
            f'{report.ignore_index}): reduce_zero_label? wrong dataset type or num_classes?')


def _no_images(report: SplitReport) -> str:
    found = _suffix_counts(report.img_dir)
    others = ', '.join(f'{count} *{suffix}' for suffix, count in found[:3])
    hint = f' (it has {others}: another img_suffix?)' if others else ''
    return (f"{report.img_dir} holds no '*{report.img_suffix}' images for {report.where}{hint}: "
            'put the images there or fix data_prefix.img_path / img_suffix')


def _suffix_counts(folder: str) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for _, _, files in os.walk(folder):
        for name in files:
            suffix = osp.splitext(name)[1].lower()
            counts[suffix] = counts.get(suffix, 0) + 1
    return sorted(counts.items(), key=lambda item: -item[1])


def format_values(values: Iterable[int]) -> str:
    """``{0, 1, 2, 3, 7, 255}`` -> ``'0-3, 7, 255'`` (runs collapsed; past 8 items the first
    6, ``...`` and the last)."""
    runs: list[list[int]] = []
    for value in sorted(values):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    items = [str(a) if a == b else f'{a}-{b}' for a, b in runs]
    return ', '.join(items if len(items) <= 8 else items[:6] + ['...', items[-1]])


def format_report(report: SplitReport) -> list[str]:
    """The per-split report of ``tools/misc/check_dataset.py`` (several lines)."""
    also = f' (also {", ".join(report.also)})' if report.also else ''
    lines = [f'{report.where}{also}: {report.dataset_type}, {report.images} images in '
             f"{report.img_dir} ('*{report.img_suffix}')"]
    if report.images:
        lines.append(f"  annotations: {report.paired} of {report.images} paired in "
                     f"{report.seg_dir} ('*{report.seg_map_suffix}')" if report.paired or
                     report.findings else '  annotations: none loaded by the pipeline')
        lines.append(f'  files: {report.files_checked} checked (present, non-empty, images)')
        reduced = {effective_value(value, report.reduce_zero_label, None)
                   for value in report.values} - {-1}
        lines.append(
            f'  label maps read: {report.labels_read} of {report.paired}; values stored: '
            f'{format_values(report.values) or "-"}; after reduce_zero_label='
            f'{report.reduce_zero_label}: {format_values(reduced) or "-"}; valid: '
            f'0-{report.num_classes - 1} ({report.num_classes} classes) and ignore '
            f'{report.ignore_index}')
        lines.append(f'  sizes: {report.sizes_agree} of {report.labels_read} pairs read agree')
    status = 'OK' if report.ok else f'{len(report.findings)} problem(s):'
    lines.append(f'  {status} ({report.seconds:.1f} s)')
    lines.extend(f'  - {finding}' for finding in report.findings)
    return lines


def _wxh(size: tuple[int, int]) -> str:
    return f'{size[0]}x{size[1]}'


def _type_name(dataset_type: Any) -> str:
    return getattr(dataset_type, '__name__', str(dataset_type))


def _import_dataset_modules(cfg: Any) -> None:
    """mmseg's datasets and the config's ``custom_imports`` (custom dataset classes)."""
    import mmseg.datasets  # noqa: F401 - registers mmseg's datasets
    from mmengine.utils import import_modules_from_strings

    custom = cfg.get('custom_imports')
    if isinstance(custom, dict) and custom.get('imports'):
        import_modules_from_strings(**custom)
