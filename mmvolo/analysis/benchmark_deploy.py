"""Deployment benchmark: VOLO-D1 and Swin-T UperNet, PyTorch vs onnxruntime, one process.

    python tools/analysis/benchmark_deploy.py --work-dir work_dirs/bench_deploy
        [--models volo-d1_upernet swin-t_upernet] [--sizes 512x512 1024x2048]
        [--threads 1 2] [--backends eager compile ort-fp32 ort-int8] [--repeats 3]
        [--calibrate 8] [--holdout 4] [--json FILE] [--profile N]
    python tools/analysis/benchmark_deploy.py --work-dir DIR --dry-run   # tiny, seconds
        (without ``compile`` unless --backends names it: inductor takes a minute even there)

Per model (random weights, the ADE20K 512x512 configs; Swin-T's ``test_cfg`` set to VOLO-D1's
slide, 512x512 windows at stride 341, so both run the same windows: one for a 512x512 image,
three for 1024x2048, which the ADE test Resize makes 512x1024), per image size and thread
count, one image end to end from the decoded uint8 array to the label map:

* ``eager``: ``mmseg.apis.inference_model`` (the config's pipeline, slide inference);
* ``compile``: the same with ``extract_feat`` and the decode head's ``forward`` under
  ``torch.compile`` (inductor, CPU); the first call's time (compilation) is reported apart;
* ``ort-fp32``: :class:`mmvolo_runtime.OnnxSegmentor` on the file ``export_onnx.py`` writes
  (same weights, batch 1: windows one by one, as mmseg's ``slide_inference``);
* ``ort-int8``: the same on :mod:`mmvolo_runtime.quantize`'s QDQ file, calibrated on
  ``--calibrate`` toy images (:mod:`mmvolo.datasets.toy_generator`, 512x512), with its label
  agreement with fp32 on ``--holdout`` other toy images.

Reported: median ms over ``--repeats`` (after one warm-up), peak RSS (sampled every 5 ms
over the case, minus the process's RSS before it, freed memory returned with ``malloc_trim``;
the onnxruntime rows include loading the file, the PyTorch rows add the weights, built once
per model), the ratio to Swin-T eager at the same size and threads, and the share
of pixels labelled as eager labels them. ``--profile N``: onnxruntime's profiler on one more
run of each onnxruntime case, time per op type (top N).
"""
from __future__ import annotations

import argparse
import collections
import copy
import ctypes
import gc
import json
import os
import os.path as osp
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mmvolo.cli import UsageError
from mmvolo.cli.arguments import ToolArgumentParser, check_output_folder, write_json_report

from .benchmark_model import MODELS, resolve_config

BACKENDS = ('eager', 'compile', 'ort-fp32', 'ort-int8')
BASELINE = ('swin-t_upernet', 'eager')
#: VOLO-D1's test_cfg, given to both models (see the module docstring).
SLIDE = dict(mode='slide', crop_size=(512, 512), stride=(341, 341))
#: --dry-run: tiny backbones and heads, 64x64 windows, images of 64x64 and 128x256.
DRY_SLIDE = dict(mode='slide', crop_size=(64, 64), stride=(43, 43))
DRY_SIZES = ((64, 64), (128, 256))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ToolArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', required=True,
                        help='where the exports, int8 files and images go')
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    parser.add_argument('--sizes', nargs='+', default=['512x512', '1024x2048'],
                        help='image sizes HxW')
    parser.add_argument('--threads', nargs='+', type=int, default=[1, 2])
    parser.add_argument('--backends', nargs='+', default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--calibrate', type=int, default=8, help='int8 calibration images')
    parser.add_argument('--holdout', type=int, default=4, help='int8 agreement images')
    parser.add_argument('--profile', type=int, default=0, metavar='N',
                        help='onnxruntime per-op-type profile of each onnxruntime case, top N')
    parser.add_argument('--json', help='write the records to this file')
    parser.add_argument('--dry-run', action='store_true',
                        help='tiny models and sizes, one repeat, one thread (seconds)')
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> list[tuple[int, int]]:
    """The sizes as (H, W); one-line UsageError for arguments no case could run with."""
    for flag, value, low in (('--repeats', args.repeats, 1), ('--calibrate', args.calibrate, 1),
                             ('--holdout', args.holdout, 1), ('--profile', args.profile, 0),
                             *(('--threads', t, 1) for t in args.threads)):
        if value < low:
            raise UsageError(f'{flag} must be at least {low}, got {value}')
    if osp.exists(args.work_dir) and not osp.isdir(args.work_dir):
        raise UsageError(f'--work-dir {args.work_dir} is a file; pass a folder')
    check_output_folder('--json', args.json)
    if args.dry_run:
        return list(DRY_SIZES)
    sizes = []
    for text in args.sizes:
        parts = text.lower().split('x')
        if len(parts) != 2 or not all(part.isdigit() and int(part) >= 32 for part in parts):
            raise UsageError(f'--sizes {text}: expected HxW with sides of at least 32, '
                             'e.g. 512x512')
        sizes.append((int(parts[0]), int(parts[1])))
    return sizes


# ------------------------------------------------------------------------------ configs
def model_config(name: str, dry_run: bool):
    """The config a model runs with here (see the module docstring); tiny with ``dry_run``."""
    from mmengine.config import Config

    from mmvolo.models.arch_zoo import TINY_ARCH

    cfg = Config.fromfile(resolve_config(MODELS[name]))
    cfg.model.test_cfg = dict(DRY_SLIDE if dry_run else SLIDE)
    if dry_run:
        crop = DRY_SLIDE['crop_size']
        if name.startswith('volo'):
            dims = TINY_ARCH['embed_dims']
            cfg.model.backbone.update(arch=dict(TINY_ARCH), img_size=crop)
            channels = [dims[0], dims[0], dims[-1], dims[-1]]
        else:
            cfg.model.backbone.update(embed_dims=16, depths=[1, 1, 1, 1],
                                      num_heads=[1, 2, 2, 4])
            channels = [16, 32, 64, 128]
        cfg.model.decode_head.update(in_channels=channels, channels=16)
        cfg.model.auxiliary_head.update(in_channels=channels[2], channels=16)
        cfg.model.data_preprocessor.size = crop
        cfg.test_pipeline = [step if step['type'] != 'Resize' else
                             dict(step, scale=(4 * crop[1], crop[0])) for step in
                             cfg.test_pipeline]
    return cfg


def build_model(cfg):
    """The segmentor for ``inference_model``: random weights, BN, eval, ``model.cfg`` set."""
    import mmvolo  # noqa: F401 - registers VOLO
    from mmvolo import runtime  # noqa: F401 - the stack fixes, before mmseg
    from mmvolo.utils.config import build_model_for_analysis

    model = build_model_for_analysis(cfg, outlook_impl=None)
    model.cfg = copy.deepcopy(cfg)
    return model


# ------------------------------------------------------------------------------ measuring
class PeakRSS:
    """Peak resident memory while in the ``with`` block, sampled every ``interval`` s from
    /proc/self/statm, in MiB above the RSS at entry (after gc and ``malloc_trim``)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak, self.base = interval, 0, 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        release_memory()
        self.base = self.peak = current_rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2 ** 20


def current_rss() -> int:
    """This process's resident set, bytes."""
    with open('/proc/self/statm') as stream:
        return int(stream.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def release_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def timed(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, repeats: int
          ) -> tuple[float, float, np.ndarray]:
    """(first call ms, median ms of ``repeats`` further calls, the last labels) of
    ``fn(image)``."""
    start = time.perf_counter()
    labels = fn(image)
    first = (time.perf_counter() - start) * 1e3
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        labels = fn(image)
        times.append((time.perf_counter() - start) * 1e3)
    return first, statistics.median(times), labels


# ------------------------------------------------------------------------------ backends
def torch_runner(model, compiled: bool) -> Callable[[np.ndarray], np.ndarray]:
    """image (H, W, 3) uint8 BGR -> labels via ``inference_model`` (optionally compiled)."""
    import torch
    from mmseg.apis import inference_model

    if compiled:
        model = copy.copy(model)  # a shallow copy: the compiled callables on it only
        model.extract_feat = torch.compile(model.extract_feat)
        head = copy.copy(model.decode_head)
        head.forward = torch.compile(head.forward)
        model._modules = dict(model._modules, decode_head=head)

    def run(image: np.ndarray) -> np.ndarray:
        return inference_model(model, image).pred_sem_seg.data[0].numpy()

    return run


def export(cfg, model, work: Path, name: str) -> Path:
    """``export_onnx.py`` of ``model``'s weights at the window size, batch 1 (mmseg's Swin
    computes its batch with ``int()``, which torch.export bakes in: a ``--dynamic`` Swin-T
    file fails the exporter's parity check at batch 1; so both run windows one by one, as
    mmseg's ``slide_inference`` does)."""
    import torch

    from mmvolo.deploy.onnx_export import main as export_main

    config, checkpoint, out = (work / f'{name}.py', work / f'{name}_random.pth',
                               work / f'{name}.onnx')
    cfg.dump(str(config))
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, str(checkpoint))
    export_main([str(config), str(checkpoint), '--out', str(out)])
    return out


def quantize(fp32: Path, images: dict[str, list[str]], threads: int) -> tuple[Path, dict]:
    """The int8 file of ``fp32`` (calibrated on ``images['calibrate']``) and its agreement
    with fp32 on ``images['holdout']`` (:mod:`mmvolo_runtime.quantize`; never refused)."""
    import tempfile
    from dataclasses import asdict

    from mmvolo_runtime import OnnxSegmentor
    from mmvolo_runtime.quantize import PipelineCalibrationReader, compare, quantize_file

    out = fp32.with_name(fp32.stem + '_int8.onnx')
    reader = PipelineCalibrationReader(str(fp32), images['calibrate'])
    with tempfile.TemporaryDirectory(dir=fp32.parent) as work:
        quantize_file(str(fp32), reader, str(out), work)
    agreement = compare(OnnxSegmentor(str(fp32), threads=threads),
                        OnnxSegmentor(str(out), threads=threads), images['holdout'],
                        images.get('labels'))
    return out, asdict(agreement)


def ort_profile(path: Path, image: np.ndarray, threads: int, top: int) -> list:
    """[(op type, ms, share)] of one ``predict`` under onnxruntime's profiler, top ``top``."""
    import onnxruntime as ort

    from mmvolo_runtime import OnnxSegmentor

    segmentor = OnnxSegmentor(str(path), threads=threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix('')) + f'_profile_t{threads}'
    segmentor.session = ort.InferenceSession(str(path), options,
                                             providers=['CPUExecutionProvider'])
    segmentor.predict(image)
    trace = segmentor.session.end_profiling()
    with open(trace) as stream:
        events = json.load(stream)
    os.remove(trace)
    spent: collections.Counter = collections.Counter()
    for event in events:
        if event.get('cat') == 'Node' and event.get('name', '').endswith('_kernel_time'):
            spent[event['args'].get('op_name', '?')] += event['dur'] / 1e3
    total = sum(spent.values()) or 1.0
    return [(op, ms, ms / total) for op, ms in spent.most_common(top)]


# ------------------------------------------------------------------------------ cases
def toy_images(work: Path, dry_run: bool, count: int) -> list[str]:
    """``count`` toy images (512x512; 64x64 for a dry run) for calibration and agreement."""
    from mmvolo.datasets.toy_generator import ToySpec, generate_toy_dataset

    root = work / ('toy_dry' if dry_run else 'toy')
    size = 64 if dry_run else 512
    folder = root / 'images' / 'training'
    if len(list(folder.glob('*.jpg'))) < count:
        generate_toy_dataset(root, ToySpec(num_train=count, num_val=1, size=size, seed=3))
    return [str(path) for path in sorted(folder.glob('*.jpg'))[:count]]


def bench_images(work: Path, sizes: list[tuple[int, int]], source: str) -> dict:
    """{(H, W): image}: a toy image resized to each size (BGR uint8)."""
    import cv2

    image = cv2.imread(source, cv2.IMREAD_COLOR)
    return {size: cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            for size in sizes}


def run_model(name: str, args: argparse.Namespace, images: dict, toy: dict,
              work: Path, log: Callable[[str], None]) -> list[dict]:
    """Every (backend, threads, size) case of one model; records as :func:`print_table`."""
    import torch

    cfg = model_config(name, args.dry_run)
    records: list[dict] = []
    reference: dict = {}
    threads = [1] if args.dry_run else args.threads

    def record(backend: str, t: int, size, first: float, median: float, labels, rss: float,
               **extra) -> None:
        key = (t, size)
        if backend == 'eager':
            reference[key] = labels
        agree = float((labels == reference[key]).mean()) if key in reference else None
        records.append(dict(model=name, backend=backend, threads=t, size=list(size),
                            median_ms=median, first_ms=first, peak_rss_mib=rss,
                            agree_eager=agree, **extra))
        log(f'{name} {backend} threads={t} {size[0]}x{size[1]}: {median:.1f} ms '
            f'(first {first:.0f} ms), peak +{rss:.0f} MiB')

    model = build_model(cfg)
    weights_mib = sum(t.numel() * t.element_size()
                      for t in (*model.parameters(), *model.buffers())) / 2 ** 20
    for backend in [b for b in ('eager', 'compile') if b in args.backends]:
        run = torch_runner(model, backend == 'compile')
        for t in threads:
            torch.set_num_threads(t)
            for size, image in images.items():
                with PeakRSS() as rss:
                    first, median, labels = timed(run, image, args.repeats)
                record(backend, t, size, first, median, labels, rss.mib + weights_mib,
                       compile_s=(first - median) / 1e3 if backend == 'compile' else None)
        del run
        if backend == 'compile':
            torch._dynamo.reset()
    ort_backends = [b for b in ('ort-fp32', 'ort-int8') if b in args.backends]
    if not ort_backends:
        return records
    start = time.perf_counter()
    files = {'ort-fp32': export(cfg, model, work, name)}
    log(f'{name}: exported in {time.perf_counter() - start:.0f} s')
    del model
    release_memory()
    extra: dict = {}
    if 'ort-int8' in ort_backends:
        start = time.perf_counter()
        files['ort-int8'], agreement = quantize(files['ort-fp32'], toy, max(threads))
        extra = {f'int8_{key}': value for key, value in agreement.items()}
        log(f'{name}: quantized in {time.perf_counter() - start:.0f} s, int8 vs fp32 on '
            f'{agreement["images"]} held-out toy images: '
            f'{100 * agreement["agreement"]:.2f} % of the labels equal')
    from mmvolo_runtime import OnnxSegmentor

    for backend in ort_backends:
        for t in threads:
            for size, image in images.items():
                with PeakRSS() as rss:
                    segmentor = OnnxSegmentor(str(files[backend]), threads=t)
                    first, median, labels = timed(lambda x, s=segmentor: s.predict(x)[0],
                                                  image, args.repeats)
                del segmentor
                profile = (ort_profile(files[backend], image, t, args.profile)
                           if args.profile else None)
                record(backend, t, size, first, median, labels, rss.mib, profile=profile,
                       **(extra if backend == 'ort-int8' else {}))
    return records


def print_table(records: list[dict]) -> None:
    """The table docs/deploy.md shows: one row per case, ratio to Swin-T eager."""
    base = {(r['threads'], tuple(r['size'])): r['median_ms'] for r in records
            if (r['model'], r['backend']) == BASELINE}
    header = (f"{'model':<17}{'backend':<10}{'image':>10}{'thr':>4}{'median ms':>11}"
              f"{'x Swin eager':>13}{'peak MiB':>10}{'= eager':>9}{'compile s':>10}")
    print(header)
    print('-' * len(header))
    for r in sorted(records, key=lambda r: (tuple(r['size']), r['threads'],
                                            r['model'] != BASELINE[0],
                                            BACKENDS.index(r['backend']))):
        ref = base.get((r['threads'], tuple(r['size'])))
        ratio = f"{r['median_ms'] / ref:.2f}" if ref else '-'
        agree = '-' if r['agree_eager'] is None else f"{100 * r['agree_eager']:.1f}%"
        compile_s = '-' if r.get('compile_s') is None else f"{r['compile_s']:.0f}"
        print(f"{r['model']:<17}{r['backend']:<10}{'x'.join(map(str, r['size'])):>10}"
              f"{r['threads']:>4}{r['median_ms']:>11.1f}{ratio:>13}{r['peak_rss_mib']:>10.0f}"
              f"{agree:>9}{compile_s:>10}")
    seen = set()
    for r in records:
        if r['backend'] == 'ort-int8' and 'int8_agreement' in r and r['model'] not in seen:
            seen.add(r['model'])
            print(f"{r['model']} int8 vs fp32 on {r['int8_images']} held-out toy images: "
                  f"{100 * r['int8_agreement']:.2f} % of {r['int8_pixels']} labels equal")
    for r in records:
        if r.get('profile'):
            print(f"\nonnxruntime profile, {r['model']} {r['backend']} threads={r['threads']} "
                  f"{'x'.join(map(str, r['size']))} (kernel time per op type):")
            for op, ms, share in r['profile']:
                print(f'  {op:<28}{ms:>10.1f} ms {100 * share:>5.1f}%')


def main(argv: list[str] | None = None) -> None:
    """Entry point: every case in this process, then the table."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sizes = check_args(args)
    if args.dry_run:
        args.repeats, args.calibrate, args.holdout = 1, 2, 1
        if '--backends' not in (sys.argv[1:] if argv is None else argv):
            args.backends = [b for b in BACKENDS if b != 'compile']  # a minute even tiny
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    paths = toy_images(work, args.dry_run, args.calibrate + args.holdout + 1)
    toy = dict(calibrate=paths[1:args.calibrate + 1], holdout=paths[args.calibrate + 1:])
    images = bench_images(work, sizes, paths[0])

    def log(line: str) -> None:
        print(f'[benchmark_deploy] {line}', file=sys.stderr, flush=True)

    records = []
    for name in args.models:
        records += run_model(name, args, images, toy, work, log)
        write_json_report(records, args.json)  # partial results survive a late failure
    print(f"{'dry run: tiny models, ' if args.dry_run else ''}median of {args.repeats} "
          f'runs after one, one image end to end (decoded array -> label map); random weights')
    print_table(records)
    for r in records:
        for key in [k for k, v in r.items() if v is None]:
            r.pop(key)
    write_json_report(records, args.json)
