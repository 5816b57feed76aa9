"""Convert official / timm VOLO checkpoints into tensor-only mmvolo files.

The library side of ``tools/model_converters/volo2mmseg.py`` (which only parses arguments and
prints). Reading, unwrapping and key mapping are :mod:`mmvolo.models.weights`' (the same
functions the backbone's ``init_cfg=dict(type='Pretrained')`` uses); this module adds variant
detection, the atomic tensor-only write, the summary table and the timm cross-check.

Output layouts:

* default: the backbone's official names (``patch_embed.*``, ``pos_embed``, ``network.*``),
  classification head dropped; loads through ``VOLO(init_cfg=dict(type='Pretrained', ...))``.
* ``keep_head=True``: mmpretrain classifier names (``backbone.<key>``, ``head.<key>``, see
  :func:`mmvolo.models.weights.classifier_key`); loads into ``ImageClassifier(VOLO,
  VOLOClsHead)`` through ``load_from`` or the backbone's and head's ``init_cfg``, and still
  into the bare backbone through its ``init_cfg``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .checkpoint import CheckpointError
from .download import is_url, resolve_checkpoint_path
from .fileio import atomic_path
from .models.arch_zoo import ARCH_ZOO
from .models.embed import POS_EMBED_STRIDE
from .models.weights import (
    HEAD_KEY_PATTERN,
    ConversionReport,
    convert_state_dict,
    detect_arch,
    read_volo_state_dict,
)
from .utils.logs import quiet_mmengine_info
from .utils.signals import Terminated, sigterm_raises  # noqa: F401  (the converter CLI's)

#: Largest max-abs difference, relative to max(1, max |reference|), that --verify accepts.
VERIFY_TOLERANCE = 1e-4
#: Largest target image side (pixels): a 256x256-token ``pos_embed`` (D5: 200 MB in fp32).
MAX_IMG_SIZE = 4096


class ImageSizeError(ValueError):
    """A target image size the converter cannot use (not a multiple of 16, or too large)."""


class OutputPathError(ValueError):
    """An output path that would destroy the input, or that is not a file path."""


@dataclass
class ConversionResult:
    """What :func:`convert_checkpoint` read, detected and wrote."""
    src: str
    dst: str
    arch: str
    src_size: tuple[int, int] | None
    dst_size: tuple[int, int] | None
    keep_head: bool
    safetensors: bool
    notes: list[str]
    report: ConversionReport
    num_tensors: int
    num_params: int
    verify: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# Reading and detecting
# ------------------------------------------------------------------------------------------
def detect_variant(state_dict: dict[str, torch.Tensor]
                   ) -> tuple[str, tuple[int, int] | None]:
    """('d1'..'d5', pretraining (H, W) or None) of flat VOLO weights.

    Raises:
        CheckpointError: incomplete weights, or no (or more than one) official variant fits.
    """
    try:
        return detect_arch(state_dict)
    except KeyError as error:
        raise CheckpointError(f'VOLO weights lack {error}; cannot tell the variant '
                              '(incomplete checkpoint?)') from None


def target_grid(img_size: int | tuple[int, ...] | list[int] | None
                ) -> tuple[int, int] | None:
    """``pos_embed`` token grid (H/16, W/16) for a target image size (int or (H, W)).

    Raises:
        ImageSizeError: not one or two multiples of 16 within 16..:data:`MAX_IMG_SIZE`.
    """
    if img_size is None:
        return None
    size = (img_size,) if isinstance(img_size, int) else tuple(img_size)
    if len(size) == 1:
        size = (size[0], size[0])
    valid = all(isinstance(side, int) and not isinstance(side, bool) for side in size)
    if len(size) != 2 or not valid or any(side <= 0 or side % POS_EMBED_STRIDE for side in size):
        raise ImageSizeError(f'the image size must be one or two positive multiples of '
                             f'{POS_EMBED_STRIDE}, got {list(size)}')
    if max(size) > MAX_IMG_SIZE:
        raise ImageSizeError(f'image size {list(size)} is too large: at most {MAX_IMG_SIZE} '
                             f'pixels a side (a {MAX_IMG_SIZE // POS_EMBED_STRIDE}x'
                             f'{MAX_IMG_SIZE // POS_EMBED_STRIDE}-token pos_embed)')
    return size[0] // POS_EMBED_STRIDE, size[1] // POS_EMBED_STRIDE


def check_output_path(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Refuse a ``dst`` that is ``src`` (same path, symlink or hard link) or a folder.

    Raises:
        OutputPathError: say which.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.isdir(dst):
        raise OutputPathError(f'output {dst} is a folder; give the output file path')
    same = os.path.realpath(src) == os.path.realpath(dst)
    if not same and os.path.exists(src) and os.path.exists(dst):
        same = os.path.samefile(src, dst)
    if same:
        raise OutputPathError(f'output {dst} is the input file {src}: converting would replace '
                              'it; choose another output path')


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------
def wants_safetensors(dst: str | os.PathLike, safetensors: bool = False) -> bool:
    """True when the output is to be a .safetensors file."""
    return safetensors or os.fspath(dst).endswith('.safetensors')


def save_tensors(state_dict: dict[str, torch.Tensor], path: str, safetensors: bool,
                 metadata: dict[str, str] | None = None) -> None:
    """Write a flat ``{name: tensor}`` dict (torch zip file or .safetensors)."""
    tensors = {key: _compact(value) for key, value in state_dict.items()}
    if safetensors:
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise CheckpointError('writing .safetensors needs `pip install safetensors`') from None
        save_file(tensors, path, metadata=metadata)
    else:
        torch.save(tensors, path)


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor owning exactly its own storage (no views of larger buffers)."""
    tensor = tensor.detach().contiguous()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


# ------------------------------------------------------------------------------------------
# Converting
# ------------------------------------------------------------------------------------------
def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, keep_head: bool = False,
                       img_size: int | tuple[int, ...] | list[int] | None = None,
                       ema: bool = False, safetensors: bool = False, trust: bool = False,
                       verify: bool = False, seed: int = 0) -> ConversionResult:
    """Read VOLO weights from ``src``, convert them and write a tensor-only ``dst``.

    Args:
        src: official/timm/mmvolo checkpoint (.pth, .pth.tar, .bin, .safetensors; flat or
            wrapped in state_dict/state_dict_ema/model, ``module.``-prefixed), or its
            ``http(s)://`` URL (downloaded once into torch.hub's cache, see
            :mod:`mmvolo.download`).
        dst: output file; .safetensors when it ends so or ``safetensors=True``.
        keep_head: keep the classification head, in the mmpretrain classifier layout.
        img_size: target resolution (int or (H, W)); ``pos_embed`` is resized to
            (H/16, W/16). None keeps the pretraining size.
        ema: take the EMA weights (the file must hold some).
        safetensors: force .safetensors output.
        trust: allow files that need arbitrary pickled code (only for trusted sources).
        verify: compare the written file against timm's model with the source weights
            (see :func:`verify_conversion`); ``dst`` is written only if they agree.
        seed: seed of the random verification input.

    Returns:
        ConversionResult (``verify`` holds the max-abs differences when checked).

    Raises:
        ImageSizeError: unusable ``img_size``; OutputPathError: ``dst`` is ``src`` or a folder.
        CheckpointError: unusable input (one-line message; NoEmaWeightsError for ``ema``
            without EMA weights; DownloadError for a URL that cannot be fetched). Nothing is
            written then.
        OSError: the write failed (disk full, ...); ``dst`` is left as it was.
    """
    grid = target_grid(img_size)
    check_output_path(src, dst)
    if is_url(src):  # downloaded once into torch.hub's cache; dst may not be that file
        check_output_path(resolve_checkpoint_path(src), dst)
    state_dict, notes = read_volo_state_dict(src, ema=ema, trust=trust)
    arch, src_size = detect_variant(state_dict)
    converted, report = convert_state_dict(state_dict, keep_head=keep_head,
                                           pos_embed_size=grid, classifier_layout=keep_head)
    dst_size = src_size if grid is None else (grid[0] * POS_EMBED_STRIDE,
                                              grid[1] * POS_EMBED_STRIDE)
    as_safetensors = wants_safetensors(dst, safetensors)
    result = ConversionResult(
        src=os.fspath(src), dst=os.fspath(dst), arch=arch, src_size=src_size,
        dst_size=dst_size, keep_head=keep_head, safetensors=as_safetensors, notes=notes,
        report=report, num_tensors=len(converted), num_params=report.num_params(converted))
    metadata = dict(format='mmvolo', arch=arch,
                    img_size='x'.join(map(str, dst_size)) if dst_size else 'unknown',
                    layout='classifier' if keep_head else 'backbone')
    with atomic_path(dst) as tmp:
        save_tensors(converted, tmp, as_safetensors, metadata)
        if verify:
            result.verify = verify_conversion(state_dict, tmp, arch, dst_size, keep_head, seed)
            check_verification(result.verify)
    return result


# ------------------------------------------------------------------------------------------
# Verification against timm
# ------------------------------------------------------------------------------------------
def verify_conversion(source: dict[str, torch.Tensor], converted_path: str, arch: str,
                      img_size: tuple[int, int] | None, keep_head: bool = False,
                      seed: int = 0) -> dict[str, float]:
    """Max-abs differences between timm's ``volo_<arch>`` with the source weights and the
    mmvolo models loaded from ``converted_path`` on one random image (1, 3, H, W).

    The backbone (raw mode, all four block groups) is compared with timm's
    ``forward_intermediates(x, norm=False, intermediates_only=True)``; with ``keep_head``
    the logits of ``VOLO`` + ``VOLOClsHead`` (imports mmpretrain) with timm's logits. When
    ``pos_embed`` was resized, timm gets the source weights with the same resized
    ``pos_embed``.

    Returns:
        {'group0'..'group3' (, 'logits'): max |difference|, 'scale': max |timm output|}.

    Raises:
        CheckpointError: timm is not installed.
    """
    try:
        import timm
    except ImportError:
        raise CheckpointError('--verify needs timm (`pip install timm`)') from None
    size = img_size or (224, 224)
    grid = (size[0] // POS_EMBED_STRIDE, size[1] // POS_EMBED_STRIDE)
    reference_weights, _ = convert_state_dict(source, keep_head=True, pos_embed_size=grid)
    num_classes = int(source['head.weight'].shape[0]) if 'head.weight' in source else 0
    reference = timm.create_model(f'volo_{arch}_224', pretrained=False, img_size=size,
                                  num_classes=num_classes).eval()
    missing, _ = reference.load_state_dict(reference_weights, strict=False)
    if any(not HEAD_KEY_PATTERN.match(key) for key in missing):
        raise CheckpointError(f'timm volo_{arch} lacks weights for {missing[:3]}')
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad(), quiet_mmengine_info():
        expected = reference.forward_intermediates(image, norm=False, intermediates_only=True)
        backbone = _load_backbone(converted_path, arch, size)
        groups = backbone(image)
        diffs = {f'group{index}': _max_diff(got, want)
                 for index, (got, want) in enumerate(zip(groups, expected))}
        scale = max(float(want.abs().max()) for want in expected)
        if keep_head and num_classes:
            want = reference(image)
            got = _load_head(converted_path, arch, num_classes)((groups[-1],))
            diffs['logits'] = _max_diff(got, want)
            scale = max(scale, float(want.abs().max()))
    diffs['scale'] = scale
    return diffs


def check_verification(diffs: dict[str, float], tolerance: float = VERIFY_TOLERANCE) -> None:
    """Raise CheckpointError when a difference exceeds ``tolerance * max(1, scale)``."""
    limit = tolerance * max(1., diffs.get('scale', 1.))
    bad = {name: value for name, value in diffs.items() if name != 'scale' and value > limit}
    if bad:
        raise CheckpointError(f'verification failed: max abs differences {bad} exceed {limit:.2e}'
                              '; nothing written')


def _load_backbone(path: str, arch: str, size: tuple[int, int]) -> torch.nn.Module:
    from .models.volo import VOLO

    backbone = VOLO(arch, img_size=size, feature_pyramid=False, out_indices=(0, 1, 2, 3),
                    init_cfg=dict(type='Pretrained', checkpoint=path))
    backbone.init_weights()
    return backbone.eval()


def _load_head(path: str, arch: str, num_classes: int) -> torch.nn.Module:
    from .cls.head import VOLOClsHead

    settings = ARCH_ZOO[arch]
    head = VOLOClsHead(num_classes, settings['embed_dims'][-1], settings['num_heads'][-1],
                       settings['mlp_ratio'], init_cfg=dict(type='Pretrained', checkpoint=path))
    head.init_weights()
    return head.eval()


def _max_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    if got.shape != want.shape:
        raise CheckpointError(f'verification: shapes differ, {tuple(got.shape)} vs '
                              f'{tuple(want.shape)}')
    return float((got.float() - want.float()).abs().max())


# ------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------
def summary_table(result: ConversionResult) -> str:
    """Human-readable summary of a conversion (what the CLI prints)."""
    report = result.report
    size = 'x'.join(map(str, result.src_size)) if result.src_size else 'unknown'
    out_size = 'x'.join(map(str, result.dst_size)) if result.dst_size else 'unknown'
    layout = ('mmpretrain classifier (backbone.*, head.*)' if result.keep_head
              else 'backbone (official names, head dropped)')
    rows = [
        ('source', result.src + (f" ({', '.join(result.notes)})" if result.notes else '')),
        ('variant', f'VOLO-{result.arch.upper()}, pretrained at {size}'),
        ('output', f"{result.dst} ({'safetensors' if result.safetensors else 'torch'}, "
                   'tensor-only)'),
        ('layout', layout),
        ('resolution', out_size + (' (pos_embed {} -> {})'.format(*report.resized['pos_embed'])
                                   if report.resized else '')),
        ('kept', f'{len(report.kept)} keys'),
        ('renamed', f'{len(report.renamed)} keys' + _example(report.renamed)),
        ('dropped', f'{len(report.dropped)} keys' + _dropped_groups(report.dropped)),
        ('written', f'{result.num_tensors} tensors, {result.num_params:,} parameters '
                    f'({result.num_params / 1e6:.1f}M)'),
    ]
    for name, value in result.verify.items():
        if name != 'scale':
            rows.append((f'verify {name}', f'max abs diff {value:.3e}'))
    width = max(len(name) for name, _ in rows)
    return '\n'.join(f'{name:<{width}}  {value}' for name, value in rows)


def _example(renamed: dict[str, str]) -> str:
    if not renamed:
        return ''
    key = next(iter(renamed))
    return f' (e.g. {key} -> {renamed[key]})'


def _dropped_groups(dropped: list[str]) -> str:
    if not dropped:
        return ''
    roots = sorted({key.split('.')[0] for key in dropped})
    return f" ({', '.join(roots)})"

