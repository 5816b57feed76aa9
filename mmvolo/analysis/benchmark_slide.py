"""Sliding-window inference: mmseg's ``slide_inference`` vs batched windows (``crop_batch``).

Builds the config's segmentor once (no checkpoint: ``init_cfg`` dropped, SyncBN as BN, the
default outlook attention implementation) and times, on the same random image batch and in
the same process, mmseg's ``EncoderDecoder.slide_inference`` (one forward pass per window
position) and :class:`BatchedSlideEncoderDecoder`'s with each ``--crop-batch`` value. The
methods run round-robin within each repeat, in an order that rotates from repeat to repeat
(so background load hits them alike), after ``--warmup`` runs each. The table shows median
times, the speed-up over mmseg, forward passes per batch, peak memory (CUDA only:
``torch.cuda.max_memory_allocated`` above the model and inputs) and the largest difference
from mmseg's logits.

Default: the VOLO-D1 UperNet Cityscapes 512x1024 config on one 1024x2048 image (3 x 3 windows).
``--size``, ``--crop`` and ``--stride`` scale the setting down for a slow machine (e.g.
``--size 256 512 --crop 128 256 --stride 85 170``: the same 3 x 3 grid at 1/16 of the area).

    python tools/analysis/benchmark_slide.py --device cuda --crop-batch 1 3 9
    python tools/analysis/benchmark_slide.py --device cpu --repeats 1 --warmup 0 --json s.json

Bad arguments (counts below 1, ``--device cuda`` without CUDA, ``--json`` into a missing
folder, a config without a sliding-window test) print one line ``error: ...`` and exit with
status 2 before anything is timed.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Callable

from mmvolo.cli import UsageError, load_config
from mmvolo.cli.arguments import ToolArgumentParser, check_output_folder, write_json_report

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / 'configs/volo/volo-d1_upernet_8xb2-80k_cityscapes-512x1024.py'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ToolArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default=str(DEFAULT_CONFIG),
                        help='segmentation config (default: VOLO-D1 Cityscapes 512x1024)')
    parser.add_argument('--device', default='auto', choices=['auto', 'cuda', 'cpu'],
                        help='auto: cuda when available, else cpu')
    parser.add_argument('--size', type=int, nargs=2, default=(1024, 2048), metavar=('H', 'W'),
                        help='input image size (default 1024 2048)')
    parser.add_argument('--crop', type=int, nargs=2, metavar=('H', 'W'),
                        help="window size (default: the config's test_cfg.crop_size)")
    parser.add_argument('--stride', type=int, nargs=2, metavar=('H', 'W'),
                        help="window stride (default: the config's test_cfg.stride)")
    parser.add_argument('--batch', type=int, default=1, help='images per batch (default 1)')
    parser.add_argument('--crop-batch', type=int, nargs='+', default=[1, 3, 9],
                        help='crop_batch values to time besides mmseg (default 1 3 9)')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--json', help='write the records to this file')
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse arguments nothing could run with, before building anything (UsageError)."""
    for flag, values, low in (('--batch', [args.batch], 1), ('--repeats', [args.repeats], 1),
                              ('--warmup', [args.warmup], 0), ('--crop-batch', args.crop_batch, 1),
                              ('--size', args.size, 1), ('--crop', args.crop or [1], 1),
                              ('--stride', args.stride or [1], 1)):
        for value in values:
            if value < low:
                raise UsageError(f'{flag} must be at least {low}, got {value}')
    check_output_folder('--json', args.json)
    import torch

    if args.device == 'auto':
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    elif args.device == 'cuda' and not torch.cuda.is_available():
        raise UsageError('--device cuda: no CUDA GPU here; use --device cpu')


def build(args: argparse.Namespace):
    """The config's segmentor as a ``BatchedSlideEncoderDecoder`` in eval mode, on device."""
    import mmvolo  # noqa: F401  (registers VOLO and BatchedSlideEncoderDecoder)
    from mmvolo.utils import build_model_for_analysis

    cfg = load_config(args.config)
    test_cfg = cfg.get('model', {}).get('test_cfg') or {}
    crop, stride = args.crop or test_cfg.get('crop_size'), args.stride or test_cfg.get('stride')
    if not crop or not stride:
        raise UsageError(f"{args.config} has no sliding-window test_cfg (crop_size, stride); "
                         'pass --crop H W and --stride H W')
    cfg.model.type = 'BatchedSlideEncoderDecoder'
    cfg.model.test_cfg = dict(mode='slide', crop_size=tuple(crop), stride=tuple(stride))
    model = build_model_for_analysis(cfg, outlook_impl=None)  # PyTorch's default init
    return model.to(args.device).eval()


def make_methods(model, inputs, crop_batches: list[int]) -> dict[str, Callable]:
    """name -> run (returns the logits); ``calls`` counts each method's forward passes."""
    from mmseg.models.segmentors import EncoderDecoder

    from mmvolo.models.segmentors.batched_slide import batched_slide_inference

    def metas():
        shape = tuple(inputs.shape[2:])
        return [dict(img_shape=shape, ori_shape=shape, pad_shape=shape) for _ in inputs]

    methods = {'mmseg': lambda: EncoderDecoder.slide_inference(model, inputs, metas())}
    for crop_batch in crop_batches:
        methods[f'crop_batch={crop_batch}'] = (
            lambda k=crop_batch: batched_slide_inference(model, inputs, metas(), k))
    return methods


def run(args: argparse.Namespace) -> list[dict]:
    import torch

    from mmvolo.models.segmentors.batched_slide import slide_windows

    device = torch.device(args.device)
    model = build(args)
    test_cfg = model.test_cfg
    inputs = torch.randn(args.batch, 3, *args.size, device=device)
    windows = len(list(slide_windows(tuple(args.size), test_cfg.crop_size, test_cfg.stride)))
    methods = make_methods(model, inputs, sorted(set(args.crop_batch)))

    def sync() -> None:
        if device.type == 'cuda':
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {name: [] for name in methods}
    peaks: dict[str, float] = {}
    outputs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for _ in range(args.warmup):
            for fn in methods.values():
                fn()
        sync()
        names = list(methods)
        for repeat in range(args.repeats):  # the order rotates: no method is always first
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                fn = methods[name]
                if device.type == 'cuda':
                    torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated() if device.type == 'cuda' else 0
                start = time.perf_counter()
                out = fn()
                sync()
                times[name].append(time.perf_counter() - start)
                if device.type == 'cuda':
                    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
                    peaks[name] = max(peaks.get(name, 0.0), peak)
                outputs[name] = out
                del out
    base_ms = statistics.median(times['mmseg']) * 1e3
    passes = {name: math.ceil(windows * args.batch / int(name.split('=')[1]))
              for name in methods if name != 'mmseg'}
    passes['mmseg'] = windows  # one per window position, the whole batch at once
    records = []
    for name in methods:
        median_ms = statistics.median(times[name]) * 1e3
        records.append(dict(
            method=name, device=args.device, batch=args.batch, size=list(args.size),
            crop=list(test_cfg.crop_size), stride=list(test_cfg.stride), windows=windows,
            forward_passes=passes[name], repeats=args.repeats, median_ms=median_ms,
            speedup=base_ms / median_ms, peak_mib=peaks.get(name),
            max_abs_diff=float((outputs[name] - outputs['mmseg']).abs().max())))
    return records


def format_table(records: list[dict]) -> str:
    header = (f"{'method':<16}{'passes':>7}{'median ms':>12}{'vs mmseg':>10}{'peak MiB':>10}"
              f"{'max |diff|':>12}")
    lines = [header, '-' * len(header)]
    for rec in records:
        peak = '-' if rec['peak_mib'] is None else f"{rec['peak_mib']:.0f}"
        lines.append(f"{rec['method']:<16}{rec['forward_passes']:>7}{rec['median_ms']:>12.1f}"
                     f"{rec['speedup']:>9.2f}x{peak:>10}{rec['max_abs_diff']:>12.2e}")
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point (bad arguments raise UsageError)."""
    args = parse_args(argv)
    check_args(args)
    records = run(args)
    first = records[0]
    print(f"config={Path(args.config).name} device={args.device} batch={args.batch} "
          f"input={'x'.join(map(str, args.size))} crop={'x'.join(map(str, first['crop']))} "
          f"stride={'x'.join(map(str, first['stride']))} windows/image={first['windows']} "
          f'repeats={args.repeats} warmup={args.warmup} (medians)')
    print(format_table(records))
    write_json_report(records, args.json)

