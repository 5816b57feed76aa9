"""The stages of ``tools/analysis/gpu_report.py``: one function per stage, ``fn(run)``.

``run`` is gpu_report's ``StageRun``: ``run.device``, ``run.dry`` (CPU, toy sizes),
``run.out`` (the report folder), ``run.scratch`` (a temporary folder), ``run.add(**row)``,
``run.check(...)`` (correctness; a failed one fails the stage), ``run.target(...)``
(performance; reported only), ``run.within_budget(items)`` (stops when the budget is spent).
Every measurement is guarded: one that raises becomes a row with its error and the stage
goes on; OOM frees the cache first.

kernels
    Each case draws v, logits and an upstream gradient in the case's dtype; the reference op
    runs on fp64 copies of those same values (so input rounding is not counted), on the same
    device. Error of a tensor: ``max|x - ref| / max(1, max|ref|)`` (absolute for O(1) values,
    relative for larger ones). Tolerance: fp32 1e-5; fp16/bf16 ``eps(dtype) * L`` with L the
    reduction length behind one element: K^2 * ceil(K/S)^2 window terms for the output and
    for grad v (K^2 softmax-weighted values per window, ceil(K/S)^2 windows overlap a pixel),
    head_dim + K^2 for grad logits (a head_dim dot product, then the softmax backward's sum
    over K^2) - a worst-case bound for summing L rounded terms, not a statistical one. The
    small grids use D1's head layout (192 channels, 6 heads) so the GPU compiles few Triton
    variants. Then local_aggregate (issue #23): every available impl on each configuration
    of ``AGG_CONFIGS`` (outlook, deformable outlook, involution, depthwise conv, neighborhood,
    DCNv3) vs its 'reference' on fp64 copies: output and the value, weight (``grad_logits``)
    and offset gradients; tolerances in ``AggregateCase.tolerances``.
ops
    Round-robin timing of every impl and timm (``benchmark_ops``): CUDA events, median of 25
    runs after 5 warm-up runs; peak memory is ``max_memory_allocated`` above the level before
    the step. Bytes the fused op must move at least (element size e, N_v = B*H*W*C,
    N_l = B*h*w*heads*K^4): forward e*(2*N_v + N_l) (read v and logits, write out);
    fwd+bwd e*(5*N_v + 3*N_l) (backward reads grad_out, v, logits and writes both grads).
    The fraction of HBM bandwidth divides bytes/time by a device-to-device copy measured in
    the same run (2 * bytes / time; the nominal H200 figure only if that fails).
    Then local_aggregate's impls on its outlook and DCNv3 configurations at the same shape
    (outlook: the dedicated outlook 'triton' beside them), the floor ``traffic_bytes`` (every
    input read and the output written; fwd+bwd also grad_out read, every gradient written);
    targets for its 'triton': within 2x of the floor, no slower than the outlook kernel.
backbone / training / throughput / memory / profile: see each function.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from unittest import mock

import torch

from mmvolo.models.arch_zoo import TINY_ARCH
from mmvolo.ops import available_impls, local_aggregate, outlook_attention, unsupported_reason
from mmvolo.ops.local_aggregate import LOCAL_AGGREGATE_IMPLS, make_geometry
from mmvolo.ops.outlook import IMPL_ENV_VAR, output_grid, select_impl
from mmvolo.utils import free_port
from mmvolo.utils.errors import one_line
from mmvolo.utils.logs import quiet_mmengine_info

from . import benchmark_model as bm
from . import benchmark_ops as bo

ROOT = Path(__file__).resolve().parents[2]
K, P = bo.KERNEL, bo.PADDING
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
TENSORS = ('out', 'grad_v', 'grad_logits')

#: Sizes per stage, for the GPU run and for the dry run (CPU, toy sizes).
SIZES = {
    'ops': dict(gpu=(8, 512 // bo.PATCH, 5, 25), dry=(2, 16, 1, 2)),  # batch, tokens, warm, runs
    'training': dict(gpu=400, dry=4),  # iterations; the resume starts at half of them
    'throughput': dict(gpu=(8, 512, 3, 10), dry=(2, 64, 0, 1)),  # batch, size, warmup, repeats
    'memory': dict(gpu=(1024, (1, 2)), dry=(64, (1,))),  # size, batches
    'profile': dict(gpu=(8, 512, 3), dry=(2, 64, 1)),  # batch, size, warm-up steps
}

# kernels
GRIDS = ((1, 1), (5, 7), (13, 9), (33, 17))
STAGE1 = {'D1': bo.VARIANTS['d1'], 'D4': bo.VARIANTS['d4']}  # (channels, heads)
STAGE1_TOKENS = 512 // bo.PATCH  # 64x64 tokens at 512x512 input
FP32_TOL = 1e-5

# ops
SPEEDUP_TARGET, MEMORY_TARGET = 3.0, 0.4  # fwd+bwd vs timm: >= 3x faster, <= 0.4x peak
#: H200 HBM bandwidth, nominal (read + write bytes / s); used only when this run's own
#: device-to-device copy measurement fails, and the report then says so.
H200_COPY_GBPS = 4800.0

# backbone
BACKBONE_INPUT = (1, 3, 97, 129)
#: fp32 through D1's 18 blocks on two devices: reductions of up to 1536 terms in other orders.
BACKBONE_TOL = 1e-4
DRY_ARCH = TINY_ARCH

# training
TOY_CONFIG = ROOT / 'configs' / 'volo' / 'volo-toy_upernet_1xb2-800iter_toy-64x64.py'
#: 6 classes, chance mIoU ~10: a run that learns is far above it (docs/performance.md).
MIN_MIOU = 40.0

# memory
MEMORY_CONFIGS = {f'D{i}': ROOT / 'configs' / 'volo' /
                  f'volo-d{i}_upernet_8xb1-80k_cityscapes-1024x1024.py' for i in range(1, 6)}
LIMIT_GIB = 80.0

#: Child configs for the dry run: the real configs, shrunk (same files, same code paths).
DRY_VOLO_UPERNET = '''_base_ = [{base!r}]
model = dict(backbone=dict(arch=dict(_delete_=True, layers=(1, 1, 1, 1),
                                     embed_dims=(32, 64, 64, 64), num_heads=(1, 2, 2, 2),
                                     stem_hidden_dims=16)),
             decode_head=dict(in_channels=[32, 32, 64, 64], channels=32),
             auxiliary_head=dict(in_channels=64, channels=16))
'''
DRY_SWIN_UPERNET = '''_base_ = [{base!r}]
model = dict(backbone=dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1]),
             decode_head=dict(in_channels=[16, 32, 64, 128], channels=16),
             auxiliary_head=dict(in_channels=64, channels=16))
'''


# ------------------------------------------------------------------------------ helpers
def sizes(run, stage: str):
    """This run's sizes for ``stage`` (see :data:`SIZES`)."""
    return SIZES[stage]['dry' if run.dry else 'gpu']


class StageTimeout(BaseException):
    """A time limit ran out (a BaseException: the per-measurement guards let it by)."""


class BudgetExceeded(StageTimeout):
    """A limit a stage set for one of its parts ran out (the stage catches it)."""


@contextlib.contextmanager
def time_limit(seconds: float, message: str,
               error: type = StageTimeout) -> Iterator[None]:
    """Raise ``error(message)`` in the block after ``seconds`` (SIGALRM; main thread, POSIX).

    Nests: inside another limit that ends sooner this arms nothing; otherwise the outer
    limit's handler and remaining time are restored afterwards.
    """
    if not hasattr(signal, 'setitimer') or threading.current_thread() is not \
            threading.main_thread():
        yield
        return
    outer_left = signal.getitimer(signal.ITIMER_REAL)[0]
    if outer_left and outer_left <= seconds:
        yield
        return

    def _expired(signum, frame):
        raise error(message)

    outer_handler = signal.signal(signal.SIGALRM, _expired)
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, outer_handler)
        if outer_left:
            left = outer_left - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.01))


def release_memory(device: torch.device) -> None:
    """On CUDA: collect garbage, empty the cache (guarded: a broken context must not raise)."""
    if device.type != 'cuda':
        return  # CPU tensors go with their last reference
    gc.collect()
    with contextlib.suppress(Exception):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or 'out of memory' in str(error)


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """TF32 off for matmuls and convolutions in the block (CPU-vs-GPU comparisons)."""
    saved = []
    for owner in (torch.backends.cuda.matmul, torch.backends.cudnn):
        with contextlib.suppress(Exception):
            saved.append((owner, owner.allow_tf32))
            owner.allow_tf32 = False
    try:
        yield
    finally:
        for owner, value in saved:
            with contextlib.suppress(Exception):
                owner.allow_tf32 = value


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Hold back mmengine's INFO logs (init_weights prints every parameter) and warnings."""
    with quiet_mmengine_info(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        yield


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max|got - want| / max(1, max|want|), in fp64; inf when ``got`` is not finite."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if not torch.isfinite(got).all():
        return math.inf
    return (got - want).abs().max().item() / max(1.0, want.abs().max().item())


def copy_bandwidth_gbps(device: torch.device) -> float:
    """Device-to-device copy bandwidth, (read + write bytes) / s in GB/s, median of 10."""
    nbytes = 2 ** 30 if device.type == 'cuda' else 2 ** 24
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    one_copy = {'copy': lambda: dst.copy_(src)}
    ms = bo.time_round_robin(one_copy, lambda op: op(), (), 3, 10, device)['copy']
    return 2 * nbytes / (ms * 1e-3) / 1e9


def traffic_bytes(n_in: int, n_out: int, element_size: int) -> tuple[int, int]:
    """Least bytes a fused op moves that reads ``n_in`` elements (every input) and writes
    ``n_out``: (forward, forward + backward). The backward reads grad_out and the inputs and
    writes one gradient per input: forward e*(n_in + n_out), fwd+bwd e*(3*n_in + 2*n_out)."""
    return element_size * (n_in + n_out), element_size * (3 * n_in + 2 * n_out)


def fused_bytes(batch: int, tokens: int, channels: int, heads: int,
                element_size: int) -> tuple[int, int]:
    """Least bytes the fused op moves: (forward, forward + backward); module docstring."""
    grid_h, grid_w = output_grid(tokens, tokens, bo.STRIDE)
    n_v, n_l = batch * tokens * tokens * channels, batch * grid_h * grid_w * heads * K ** 4
    return traffic_bytes(n_v + n_l, n_v, element_size)  # e*(2 N_v + N_l), e*(5 N_v + 3 N_l)


def dry_config(run, config: str | Path) -> str:
    """A shrunk child of ``config`` (a VOLO or Swin UperNet) in the scratch folder."""
    base = bm.resolve_config(str(config))
    template = DRY_SWIN_UPERNET if 'swin' in Path(base).name else DRY_VOLO_UPERNET
    path = run.scratch / f'dry_{Path(base).stem}.py'
    path.write_text(template.format(base=base))
    return str(path)


def build_model(config: str, device: torch.device):
    """``benchmark_model.build_segmentor``, quietly; on CUDA built on the device (fast init),
    falling back to building on CPU and moving it if that fails."""
    with quiet():
        if device.type == 'cuda':
            try:
                with torch.device(device):
                    return bm.build_segmentor(config, str(device))
            except Exception:  # noqa: BLE001 - some module cannot be built there: the CPU way
                release_memory(device)
        return bm.build_segmentor(config, str(device))


def segmentor_step(model, batch: int, size: int, device: torch.device) -> Callable[[], float]:
    """A training step as the Runner runs it: ``model.loss`` (decode + auxiliary heads,
    mmseg's losses) under bf16 autocast, backward, AdamW. Returns the loss value.

    With batch 1 the BatchNorms run in eval mode: the pooling pyramid's 1x1 maps cannot be
    batch-normalised over one image (multi-GPU SyncBN normalises across GPUs instead); the
    memory is the same to within the BN statistics.
    """
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, model.decode_head.num_classes, (batch, 1, size, size),
                           device=device)
    samples = []
    for label in labels:
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), pad_shape=(size, size),
                                             ori_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    if batch == 1:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = model.parse_losses(model.loss(images, samples))
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


# ------------------------------------------------------------------------------ kernels
@dataclass(frozen=True)
class KernelCase:
    label: str
    batch: int
    height: int
    width: int
    channels: int
    heads: int
    stride: int
    dtype: str

    def tolerances(self) -> dict[str, float]:
        """Per tensor: 1e-5 in fp32, else eps(dtype) x reduction length (module docstring)."""
        if self.dtype == 'fp32':
            return dict.fromkeys(TENSORS, FP32_TOL)
        eps = torch.finfo(DTYPES[self.dtype]).eps
        window = K * K * math.ceil(K / self.stride) ** 2
        return dict(out=eps * window, grad_v=eps * window,
                    grad_logits=eps * (self.channels // self.heads + K * K))


def kernel_cases(dry: bool) -> list[KernelCase]:
    """fp32 first (then bf16, fp16): small odd grids at stride 1 and 2, then D1/D4 stage 1."""
    channels, heads = STAGE1['D1']
    cases = []
    for dtype in DTYPES:
        cases += [KernelCase(f'{h}x{w}', 2, h, w, channels, heads, stride, dtype)
                  for h, w in GRIDS for stride in (1, 2)]
        if not dry:
            cases += [KernelCase(f'{name} {STAGE1_TOKENS}x{STAGE1_TOKENS}', 2, STAGE1_TOKENS,
                                 STAGE1_TOKENS, c, n, bo.STRIDE, dtype)
                      for name, (c, n) in STAGE1.items()]
    return cases


def kernel_inputs(case: KernelCase, device: torch.device) -> tuple:
    """(v, logits, grad_out) in the case's dtype, drawn on CPU with a fixed seed."""
    gen = torch.Generator().manual_seed(case.height * 1000 + case.width * 10 + case.stride)
    grid_h, grid_w = output_grid(case.height, case.width, case.stride)
    shapes = ((case.batch, case.height, case.width, case.channels),
              (case.batch, grid_h, grid_w, case.heads * K ** 4),
              (case.batch, case.height, case.width, case.channels))
    return tuple(torch.randn(*shape, generator=gen).to(device, DTYPES[case.dtype])
                 for shape in shapes)


def fwd_bwd(v: torch.Tensor, logits: torch.Tensor, grad: torch.Tensor, case: KernelCase,
            impl: str) -> tuple:
    """(out, grad wrt v, grad wrt logits) of ``impl`` on these values."""
    v = v.detach().clone().requires_grad_()
    logits = logits.detach().clone().requires_grad_()
    out = outlook_attention(v, logits, case.heads, K, P, case.stride, impl=impl)
    out.backward(grad)
    return out.detach(), v.grad, logits.grad


def kernels(run) -> None:
    """Every available impl vs the fp64 reference; values and both gradients."""
    run.note('error = max|x - ref| / max(1, max|ref|), ref = the reference op on fp64 copies '
             'of the same inputs; tolerance fp32 1e-5, fp16/bf16 eps(dtype) x reduction '
             'length (out, grad_v: K^2*ceil(K/S)^2; grad_logits: head_dim + K^2)')
    results: list[dict] = []
    not_here: dict[str, str] = {}
    with exact_fp32():
        for case in run.within_budget(kernel_cases(run.dry)):
            base = dict(case=case.label, stride=case.stride, dtype=case.dtype)
            try:
                v, logits, grad = kernel_inputs(case, run.device)
                want = fwd_bwd(v.double(), logits.double(), grad.double(), case, 'reference')
            except Exception as error:  # noqa: BLE001
                results.append(run.add(**base, impl='reference (fp64)', ok=False,
                                       error=one_line(error)))
                continue
            tol = case.tolerances()
            for impl in available_impls():
                reason = unsupported_reason(impl, v, logits)
                if reason:
                    not_here.setdefault(impl, reason)
                    continue
                results.append(run.add(**base, impl=impl, **kernel_errors(case, impl, v, logits,
                                                                        grad, want, tol)))
            failing = [r for r in results if not r['ok']]
            run.check('every impl within tolerance', not failing,
                      f'{len(results) - len(failing)} of {len(results)} within tolerance'
                      + ''.join(f"; {r['impl']} {r['dtype']} {r['case']} S{r['stride']}: "
                                f"{r.get('error') or 'over tolerance'}" for r in failing[:5]))
    for impl, reason in not_here.items():
        run.note(f"'{impl}' does not run here: {reason}")
    raised = {r['impl'] for r in results if r.get('error') and r['impl'] in available_impls()}
    if 'triton' in raised and os.environ.get(IMPL_ENV_VAR, 'auto') == 'auto':
        os.environ[IMPL_ENV_VAR] = 'chunked'  # gpu_report restores it when the run ends
        run.note(f"'triton' raised: the later stages (and their subprocesses) run with "
                 f'{IMPL_ENV_VAR}=chunked, so they still measure something')
    aggregate_kernels(run)


def kernel_errors(case: KernelCase, impl: str, v, logits, grad, want, tol) -> dict:
    """The row of one impl on one case: errors, tolerances, ok (guarded)."""
    try:
        got = fwd_bwd(v, logits, grad, case, impl)
    except Exception as error:  # noqa: BLE001
        if is_oom(error):
            release_memory(v.device)
        return dict(ok=False, error=one_line(error))
    errors = {f'{name}_err': rel_error(g, w) for name, g, w in zip(TENSORS, got, want)}
    dtypes_ok = all(g.dtype == DTYPES[case.dtype] for g in got)
    ok = dtypes_ok and all(errors[f'{name}_err'] <= tol[name] for name in TENSORS)
    return dict(errors, tol_out=tol['out'], tol_grad_logits=tol['grad_logits'], ok=ok,
                **({} if dtypes_ok else {'error': 'result dtype differs from the input'}))


# ------------------------------------------------------------------------------ ops
def ops(run) -> None:
    """D1 stage-1 op: every impl and timm, fwd and fwd+bwd, fp32 and bf16 (module docstring)."""
    batch, tokens, warmup, repeats = sizes(run, 'ops')
    channels, heads = STAGE1['D1']
    try:
        bandwidth, source = copy_bandwidth_gbps(run.device), 'measured in this run'
    except Exception as error:  # noqa: BLE001
        bandwidth, source = H200_COPY_GBPS, f'H200 nominal (measuring failed: {one_line(error)})'
    run.values['copy bandwidth GB/s'] = round(bandwidth, 1)
    run.note(f'device-to-device copy bandwidth {bandwidth:.0f} GB/s ({source}); shape '
             f'{batch}x{tokens}x{tokens}x{channels}, {heads} heads, K{K} S{bo.STRIDE}; '
             f"{'wall clock' if run.device.type == 'cpu' else 'CUDA events'} per call (launch "
             f'overhead included), median of {repeats} after {warmup} warm-up runs')
    for dtype in run.within_budget(('fp32', 'bf16'), 'dtypes'):
        try:
            ops_case(run, dtype, (batch, tokens, channels, heads), warmup, repeats, bandwidth)
        except Exception as error:  # noqa: BLE001
            run.add(dtype=dtype, impl='(all)', error=one_line(error))
        finally:
            release_memory(run.device)
    aggregate_ops(run, batch, tokens, warmup, repeats, bandwidth)


def ops_case(run, dtype: str, shape: tuple, warmup: int, repeats: int,
             bandwidth: float) -> None:
    """One dtype: every impl that runs here and timm, measured side by side."""
    batch, tokens, channels, heads = shape
    inputs = bo.make_inputs(batch, tokens, tokens, channels, heads, DTYPES[dtype], run.device)
    names = ['reference', 'timm', *(n for n in available_impls() if n != 'reference')]
    candidates = bo.make_ops(names, channels, heads, *inputs[:2])
    fused = 'triton' if 'triton' in candidates else select_impl(inputs[0], 'auto', inputs[1])
    runnable = working_ops(run, candidates, inputs, dtype)
    measure_ops(run, runnable, inputs, dtype, fused, shape, warmup, repeats, bandwidth)


def working_ops(run, candidates: dict[str, Callable], inputs: tuple, dtype: str) -> dict:
    """The ops whose fwd+bwd runs once; a row with the error for each one that does not."""
    runnable = {}
    for name, op in candidates.items():
        try:
            bo._fwdbwd(op, *inputs)  # the benchmark's own fwd+bwd step
            bo.sync(run.device)
            runnable[name] = op
        except Exception as error:  # noqa: BLE001
            run.add(dtype=dtype, impl=name, error=one_line(error))
            release_memory(run.device)
    return runnable


def measure_ops(run, runnable: dict, inputs: tuple, dtype: str, fused: str, shape: tuple,
                warmup: int, repeats: int, bandwidth: float) -> None:
    """Time, peak memory and ratios of the runnable ops; the targets for ``fused``."""
    fwd = bo.time_round_robin(runnable, bo._fwd, inputs, warmup, repeats, run.device)
    fwdbwd = bo.time_round_robin(runnable, bo._fwdbwd, inputs, warmup, repeats, run.device)
    peaks = {}
    for name, op in runnable.items():
        with contextlib.suppress(Exception):
            peaks[name] = bo.peak_mib(op, inputs, run.device)
    timm = 'timm' in runnable
    rows = {}
    for name in runnable:
        row = dict(dtype=dtype, impl=name + (' (fused)' if name == fused else ''),
                   fwd_ms=fwd[name], fwdbwd_ms=fwdbwd[name], peak_mib=peaks.get(name))
        if timm:
            row['x_timm_speed'] = fwdbwd['timm'] / fwdbwd[name]
            if peaks.get(name) is not None and peaks.get('timm'):
                row['x_timm_memory'] = peaks[name] / peaks['timm']
        if name == fused:
            fwd_bytes, fwdbwd_bytes = fused_bytes(*shape, inputs[0].element_size())
            row['hbm_fraction_fwd'] = fwd_bytes / (fwd[name] * 1e-3) / (bandwidth * 1e9)
            row['hbm_fraction_fwdbwd'] = fwdbwd_bytes / (fwdbwd[name] * 1e-3) / (bandwidth * 1e9)
        rows[name] = run.add(**row)
    if fused not in rows:
        run.target(f'{dtype} fwd+bwd: {fused} vs timm', False, f'{fused} did not run')
    elif timm:
        speed, memory = rows[fused]['x_timm_speed'], rows[fused].get('x_timm_memory')
        run.target(f'{dtype} fwd+bwd: {fused} >= {SPEEDUP_TARGET:g}x faster than timm',
                   speed >= SPEEDUP_TARGET, f'{speed:.2f}x')
        run.target(f'{dtype} fwd+bwd: {fused} peak <= {MEMORY_TARGET:g}x timm\'s',
                   None if memory is None else memory <= MEMORY_TARGET,
                   'not measured' if memory is None else f'{memory:.2f}x')


# ------------------------------------------------------------------------------ local_aggregate
#: The family's configurations of local_aggregate (issue #23) the kernels and ops stages run,
#: at D1's stage-1 channels (192): groups None = C (depthwise), off_groups = offset groups.
AGG_CONFIGS = {
    'outlook': dict(groups=6, kernel_size=K, stride=bo.STRIDE, padding=P, normalize='softmax',
                    fold=True),
    'deformable outlook': dict(groups=6, off_groups=6, kernel_size=K, stride=bo.STRIDE,
                               padding=P, normalize='softmax', fold=True),
    'involution': dict(groups=12, kernel_size=7, padding=3),
    'depthwise conv': dict(groups=None, kernel_size=7, padding=3, static=True),
    'neighborhood': dict(groups=6, kernel_size=7, boundary='clamp', normalize='softmax'),
    'DCNv3': dict(groups=6, off_groups=6, kernel_size=K, padding=1, normalize='softmax'),
}
AGG_GRID = (13, 9)  # odd, not a multiple of the kernels' 32-pixel tile
#: configurations also checked in bf16/fp16 and at stage-1 size, and timed in the ops stage
AGG_MAIN = ('outlook', 'DCNv3')
AGG_IMPL_ENV_VAR = LOCAL_AGGREGATE_IMPLS.env_var
#: the impl variables the stages may switch (gpu_report restores them when the run ends)
IMPL_ENV_VARS = (IMPL_ENV_VAR, AGG_IMPL_ENV_VAR)


@dataclass(frozen=True)
class AggregateCase:
    label: str
    config: str
    batch: int
    height: int
    width: int
    channels: int
    dtype: str

    def args(self) -> dict:
        """local_aggregate's keyword arguments (groups resolved)."""
        args = {key: val for key, val in AGG_CONFIGS[self.config].items() if key not in
                ('off_groups', 'static')}
        args['groups'] = args['groups'] or self.channels
        return args

    def tolerances(self) -> dict[str, float]:
        """fp32 1e-5; fp16/bf16 eps x reduction length: K^2 (x ceil(K/S)^2 windows with
        fold) terms per output and value-gradient element (x4 bilinear corners with
        offsets); C/G + K^2 for the weight gradient (a dot product, then the softmax
        backward's sum), C/Go + that window for the offset gradient."""
        names = ('out', 'grad_v', 'grad_logits', 'grad_offset')
        if self.dtype == 'fp32':
            return dict.fromkeys(names, FP32_TOL)
        cfg = AGG_CONFIGS[self.config]
        eps = torch.finfo(DTYPES[self.dtype]).eps
        k, stride = cfg['kernel_size'], cfg.get('stride', 1)
        window = k * k * (math.ceil(k / stride) ** 2 if cfg.get('fold') else 1)
        corners = 4 if cfg.get('off_groups') else 1
        per_group = self.channels // (cfg['groups'] or self.channels)
        per_offset_group = self.channels // cfg.get('off_groups', 1)
        return dict(out=eps * window * corners, grad_v=eps * window * corners,
                    grad_logits=eps * (per_group + k * k),
                    grad_offset=eps * (per_offset_group + window))


def aggregate_cases(dry: bool) -> list[AggregateCase]:
    """Every configuration in fp32 on a small odd grid; then (GPU) the main ones at D1's
    stage-1 size; then the main ones in bf16 and fp16."""
    channels = STAGE1['D1'][0]
    height, width = AGG_GRID
    small = f'{height}x{width}'
    cases = [AggregateCase(f'{name} {small}', name, 2, height, width, channels, 'fp32')
             for name in AGG_CONFIGS]
    if not dry:
        size = f'{STAGE1_TOKENS}x{STAGE1_TOKENS}'
        cases += [AggregateCase(f'{name} {size}', name, 2, STAGE1_TOKENS, STAGE1_TOKENS,
                                channels, 'fp32') for name in AGG_MAIN]
    cases += [AggregateCase(f'{name} {small}', name, 2, height, width, channels, dtype)
              for dtype in ('bf16', 'fp16') for name in AGG_MAIN]
    return cases


def aggregate_inputs(config: str, batch: int, height: int, width: int, channels: int,
                     dtype: torch.dtype, device: torch.device) -> tuple:
    """(value, weight, offset | None, grad_out, kwargs), drawn on CPU with a fixed seed;
    offsets ~ N(0, 1.5^2) pixels."""
    cfg = AGG_CONFIGS[config]
    case = AggregateCase('', config, batch, height, width, channels, 'fp32')
    kwargs = case.args()
    k = kwargs['kernel_size']
    gen = torch.Generator().manual_seed(height * 1000 + width * 10 + k)
    value = torch.randn(batch, height, width, channels, generator=gen)
    geom = make_geometry('local_aggregate', value, k, kwargs.get('stride', 1),
                         kwargs.get('padding', 0), kwargs.get('dilation', 1),
                         kwargs.get('boundary', 'zeros'))
    tail = (kwargs['groups'], k * k) + ((k * k,) if cfg.get('fold') else ())
    lead = () if cfg.get('static') else (batch, geom.out_h, geom.out_w)
    weight = torch.randn(*lead, *tail, generator=gen)
    offset = None
    if cfg.get('off_groups'):
        offset = torch.randn(batch, geom.out_h, geom.out_w, cfg['off_groups'], k * k, 2,
                             generator=gen) * 1.5
    out_hw = (height, width) if cfg.get('fold') else (geom.out_h, geom.out_w)
    grad = torch.randn(batch, *out_hw, channels, generator=gen)
    tensors = [None if t is None else t.to(device, dtype) for t in (value, weight, offset, grad)]
    return (*tensors, kwargs)


def aggregate_fwd_bwd(impl: str, value, weight, offset, grad, kwargs) -> list:
    """[out, grad value, grad weight(, grad offset)] of local_aggregate ``impl``."""
    leaves = [t.detach().clone().requires_grad_() for t in (value, weight)]
    off = None if offset is None else offset.detach().clone().requires_grad_()
    out = local_aggregate(*leaves, offset=off, impl=impl, **kwargs)
    out.backward(grad)
    return [out.detach(), *(t.grad for t in leaves)] + ([] if off is None else [off.grad])


def aggregate_kernels(run) -> None:
    """Every available local_aggregate impl vs its reference on fp64 copies, per
    configuration: output and the value, weight and offset gradients."""
    if run.expired():  # the outlook cases used the budget up (and recorded the skip)
        run.note('local_aggregate cases not run: the budget ran out')
        return
    run.note('local_aggregate (issue #23): every available impl per configuration vs its '
             "'reference' on fp64 copies; grad_logits = the weight's gradient (the logits' "
             'for softmax configurations); tolerances: AggregateCase.tolerances')
    results: list[dict] = []
    not_here: dict[str, str] = {}
    names = [name for name in LOCAL_AGGREGATE_IMPLS.available() if name != 'reference']
    with exact_fp32():
        for case in run.within_budget(aggregate_cases(run.dry), 'local_aggregate cases'):
            base = dict(case=case.label, stride=AGG_CONFIGS[case.config].get('stride', 1),
                        dtype=case.dtype)
            try:
                value, weight, offset, grad, kwargs = aggregate_inputs(
                    case.config, case.batch, case.height, case.width, case.channels,
                    DTYPES[case.dtype], run.device)
                want = aggregate_fwd_bwd('reference', *(None if t is None else t.double()
                                                        for t in (value, weight, offset, grad)),
                                         kwargs)
            except Exception as error:  # noqa: BLE001
                results.append(run.add(**base, impl='local_aggregate reference (fp64)',
                                       ok=False, error=one_line(error)))
                release_memory(run.device)
                continue
            for name in names:
                reason = LOCAL_AGGREGATE_IMPLS.unsupported_reason(name, value, weight)
                if reason:
                    not_here.setdefault(name, reason)
                    continue
                results.append(run.add(**base, impl=f'local_aggregate {name}',
                                       **aggregate_errors(case, name, value, weight, offset,
                                                          grad, kwargs, want)))
            failing = [r for r in results if not r['ok']]
            run.check('every local_aggregate impl within tolerance', not failing,
                      f'{len(results) - len(failing)} of {len(results)} within tolerance'
                      + ''.join(f"; {r['impl']} {r['dtype']} {r['case']}: "
                                f"{r.get('error') or 'over tolerance'}" for r in failing[:5]))
            release_memory(run.device)
    for name, reason in not_here.items():
        run.note(f"local_aggregate '{name}' does not run here: {reason}")
    raised = any(r.get('error') and r['impl'] == 'local_aggregate triton' for r in results)
    if raised and os.environ.get(AGG_IMPL_ENV_VAR, 'auto') == 'auto':
        os.environ[AGG_IMPL_ENV_VAR] = 'fast'  # gpu_report restores it when the run ends
        run.note(f"local_aggregate 'triton' raised: the later stages run with "
                 f'{AGG_IMPL_ENV_VAR}=fast')


def aggregate_errors(case: AggregateCase, impl: str, value, weight, offset, grad, kwargs,
                     want: list) -> dict:
    """The row of one local_aggregate impl on one case: errors, tolerances, ok (guarded)."""
    try:
        got = aggregate_fwd_bwd(impl, value, weight, offset, grad, kwargs)
    except Exception as error:  # noqa: BLE001
        if is_oom(error):
            release_memory(value.device)
        return dict(ok=False, error=one_line(error))
    tol = case.tolerances()
    names = ('out', 'grad_v', 'grad_logits', 'grad_offset')[:len(got)]
    errors = {f'{name}_err': rel_error(g, w) for name, g, w in zip(names, got, want)}
    dtypes_ok = all(g.dtype == DTYPES[case.dtype] for g in got)
    ok = dtypes_ok and all(errors[f'{name}_err'] <= tol[name] for name in names)
    return dict(errors, **{f'tol_{name}': tol[name] for name in names}, ok=ok,
                **({} if dtypes_ok else {'error': 'result dtype differs from the input'}))


def aggregate_op(impl: str, kwargs: dict) -> Callable:
    """op(value, weight, offset) -> out: local_aggregate ``impl``, or (impl 'outlook
    triton') the dedicated outlook kernel on the same tensors (weight = the logits)."""
    if impl == 'outlook triton':
        return lambda value, weight, offset: outlook_attention(
            value, weight.flatten(3), kwargs['groups'], K, P, bo.STRIDE, impl='triton')
    return lambda value, weight, offset: local_aggregate(value, weight, offset=offset,
                                                         impl=impl, **kwargs)


def _agg_fwd(op: Callable, value, weight, offset, grad) -> None:
    with torch.no_grad():
        op(value, weight, offset)


def _agg_fwdbwd(op: Callable, value, weight, offset, grad) -> None:
    for leaf in (value, weight, offset):
        if leaf is not None:
            leaf.grad = None
    op(value, weight, offset).backward(grad)


def _agg_peak_mib(op: Callable, inputs: tuple, device: torch.device) -> float | None:
    """Peak MiB allocated above the starting level in one fwd+bwd step (CUDA; else None)."""
    if device.type != 'cuda':
        return None
    _agg_fwdbwd(op, *inputs)  # the grads exist before the base level is taken
    bo.sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    _agg_fwdbwd(op, *inputs)
    bo.sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def aggregate_ops(run, batch: int, tokens: int, warmup: int, repeats: int,
                  bandwidth: float) -> None:
    """local_aggregate's impls (and, for outlook, the dedicated outlook 'triton') at D1's
    stage-1 shape, fwd and fwd+bwd; the fused impl against the memory-traffic floor."""
    if run.expired():
        run.note('local_aggregate not timed: the budget ran out')
        return
    channels = STAGE1['D1'][0]
    run.note('local_aggregate (issue #23): configurations ' + ', '.join(AGG_MAIN) + ' at '
             f'{batch}x{tokens}x{tokens}x{channels}; floor = traffic_bytes (every input read, '
             'the output written; fwd+bwd also grad_out read and every gradient written); '
             "targets for its 'triton': fwd+bwd within 2x of the floor (HBM fraction >= 0.5) "
             "and no slower than the dedicated outlook 'triton'")
    cases = [(config, dtype) for dtype in ('fp32', 'bf16') for config in AGG_MAIN]
    for config, dtype in run.within_budget(cases, 'local_aggregate cases'):
        try:
            aggregate_ops_case(run, config, dtype, (batch, tokens, channels), warmup, repeats,
                               bandwidth)
        except Exception as error:  # noqa: BLE001
            run.add(dtype=dtype, impl=f'local_aggregate (all) {config}', error=one_line(error))
        finally:
            release_memory(run.device)


def aggregate_ops_case(run, config: str, dtype: str, shape: tuple, warmup: int,
                       repeats: int, bandwidth: float) -> None:
    """One configuration and dtype: every runnable impl, side by side."""
    batch, tokens, channels = shape
    value, weight, offset, grad, kwargs = aggregate_inputs(config, batch, tokens, tokens,
                                                           channels, DTYPES[dtype], run.device)
    inputs = (value.requires_grad_(), weight.requires_grad_(),
              None if offset is None else offset.requires_grad_(), grad)
    names = [n for n in LOCAL_AGGREGATE_IMPLS.available()
             if LOCAL_AGGREGATE_IMPLS.unsupported_reason(n, value, weight) is None]
    if 'triton' in names:  # the fused kernel vs its reference (the CPU path: not worth GPU time)
        names = ['reference', 'triton']
    candidates = {f'local_aggregate {n}': aggregate_op(n, kwargs) for n in names}
    if config == 'outlook' and unsupported_reason('triton', value, weight.flatten(3)) is None:
        candidates['outlook triton'] = aggregate_op('outlook triton', kwargs)
    runnable = {}
    for name, op in candidates.items():
        try:
            _agg_fwdbwd(op, *inputs)
            bo.sync(run.device)
            runnable[name] = op
        except Exception as error:  # noqa: BLE001
            run.add(dtype=dtype, impl=f'{name} ({config})', error=one_line(error))
            release_memory(run.device)
    fwd = bo.time_round_robin(runnable, _agg_fwd, inputs, warmup, repeats, run.device)
    fwdbwd = bo.time_round_robin(runnable, _agg_fwdbwd, inputs, warmup, repeats, run.device)
    n_in = sum(t.numel() for t in inputs[:3] if t is not None)
    fwd_bytes, fwdbwd_bytes = traffic_bytes(n_in, grad.numel(), value.element_size())
    rows = {}
    for name, op in runnable.items():
        row = dict(dtype=dtype, impl=f'{name} ({config})', fwd_ms=fwd[name],
                   fwdbwd_ms=fwdbwd[name], peak_mib=_agg_peak_mib(op, inputs, run.device),
                   hbm_fraction_fwd=fwd_bytes / (fwd[name] * 1e-3) / (bandwidth * 1e9),
                   hbm_fraction_fwdbwd=fwdbwd_bytes / (fwdbwd[name] * 1e-3) / (bandwidth * 1e9))
        rows[name] = run.add(**row)
    fused = rows.get('local_aggregate triton')
    if fused is None:
        reason = LOCAL_AGGREGATE_IMPLS.unsupported_reason('triton', value, weight)
        run.note(f"local_aggregate 'triton' not timed here ({reason or 'it raised'}): its "
                 'targets are measured where it runs')
        return
    run.target(f'{dtype} {config} fwd+bwd: local_aggregate triton within 2x of the '
               'memory-traffic floor', fused['hbm_fraction_fwdbwd'] >= 0.5,
               f"HBM fraction {fused['hbm_fraction_fwdbwd']:.2f}")
    dedicated = rows.get('outlook triton')
    if config == 'outlook':
        run.target(f'{dtype} outlook fwd+bwd: local_aggregate triton no slower than the '
                   'dedicated outlook triton',
                   None if dedicated is None else fused['fwdbwd_ms'] <= dedicated['fwdbwd_ms'],
                   'outlook triton did not run' if dedicated is None else
                   f"{fused['fwdbwd_ms']:.3f} ms vs {dedicated['fwdbwd_ms']:.3f} ms")


# ------------------------------------------------------------------------------ backbone
def backbone(run) -> None:
    """VOLO-D1 (dry: a tiny VOLO) on the device vs the CPU reference; graph breaks; compile."""
    import torch._dynamo

    from mmvolo import VOLO
    from mmvolo.ops import OUTLOOK_IMPLS, forced_impl

    model = VOLO(DRY_ARCH if run.dry else 'd1').eval()
    x = torch.randn(*BACKBONE_INPUT, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), forced_impl('reference', ops=(OUTLOOK_IMPLS.op,)):
        want = model(x)
    model.to(run.device)
    x = x.to(run.device)
    impl = select_impl(x.new_zeros(1, 2, 2, 8))  # what the model runs: $MMVOLO_OUTLOOK_IMPL
    with torch.no_grad(), exact_fp32():
        eager = model(x)
    errors = [rel_error(got, ref) for got, ref in zip(eager, want)]
    run.add(check=f"{run.device.type} ('{impl}' op) vs CPU ('reference' op)",
            input='x'.join(map(str, BACKBONE_INPUT)), max_error=max(errors), tol=BACKBONE_TOL)
    run.check(f"output on {run.device.type} ('{impl}' op) equals the CPU output ('reference' "
              'op)', max(errors) <= BACKBONE_TOL,
              f'max error {max(errors):.2e} over {len(errors)} outputs (tolerance '
              f'{BACKBONE_TOL:g}, relative to max(1, max|ref|))')
    if run.expired():
        run.skip('graph-break count and torch.compile not run: the budget ran out')
        return
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(x)
    reasons = [str(getattr(b, 'reason', b)) for b in explanation.break_reasons][:3]
    run.add(check='torch._dynamo.explain', graphs=explanation.graph_count,
            graph_breaks=explanation.graph_break_count, reasons='; '.join(reasons) or None)
    run.check('no graph break', explanation.graph_break_count == 0,
              f'{explanation.graph_break_count} breaks' + (f": {reasons[0]}" if reasons else ''))
    if run.dry:
        run.note('torch.compile (inductor) is skipped in the dry run: on CPU it needs a C++ '
                 'compile, too slow for CI; the graph-break count above is what it would trace')
    elif run.expired():
        run.skip('torch.compile not run: the budget ran out')
    else:
        try:
            with time_limit(run.time_left(), 'torch.compile did not finish within the stage '
                            'budget: interrupted', BudgetExceeded):
                compiled_check(run, model, x, eager, impl)
        except BudgetExceeded as error:
            run.skip(str(error))
        finally:
            torch._dynamo.reset()  # drop the compiled graphs (and what they hold) for later stages


def compiled_check(run, model, x: torch.Tensor, eager: tuple, impl: str) -> None:
    """torch.compile (inductor) output equals eager; first-call and steady-state times."""
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='inductor')
    with torch.no_grad(), exact_fp32():
        start = time.perf_counter()
        outs = compiled(x)
        bo.sync(run.device)
        first_s = time.perf_counter() - start
        errors = [rel_error(got, ref) for got, ref in zip(outs, eager)]
        times = bo.time_round_robin({'eager': model, 'compiled': compiled},
                                    lambda op, t: op(t), (x,),
                            3, 10, run.device)
    run.add(check=f"torch.compile (inductor, '{impl}' op) vs eager", max_error=max(errors),
            tol=BACKBONE_TOL, compile_s=first_s, eager_ms=times['eager'],
            compiled_ms=times['compiled'])
    run.check('compiled output equals eager', max(errors) <= BACKBONE_TOL,
              f'max error {max(errors):.2e}')


# ------------------------------------------------------------------------------ training
def run_logged(command: list[str], log: Path, timeout: float, env: dict) -> tuple:
    """Run ``command`` in its own process group, output to ``log``; kill the group on
    timeout or interruption. Returns (exit code or None when timed out, seconds)."""
    start = time.monotonic()
    with open(log, 'w') as stream:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stream,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=max(timeout, 1.0)), time.monotonic() - start
        except subprocess.TimeoutExpired:
            kill_group(proc)
            return None, time.monotonic() - start
        except BaseException:
            kill_group(proc)
            raise


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (torchrun passes it on), SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def logged_losses(work_dir: Path) -> dict[int, float]:
    """Training loss per iteration from the run's ``vis_data/scalars.json``."""
    losses = {}
    for scalars in sorted(work_dir.glob('*/vis_data/scalars.json')):
        for line in scalars.read_text().splitlines():
            entry = json.loads(line)
            if 'loss' in entry:
                losses[entry['step']] = entry['loss']
    return losses


def last_miou(text: str) -> float | None:
    values = re.findall(r'mIoU: ([0-9.]+)', text)
    return float(values[-1]) if values else None


def training(run) -> None:
    """The toy config through tools/train.py, then resumed through dist_train.sh CONFIG 1."""
    from mmvolo.datasets.toy_generator import ToySpec, generate_toy_dataset

    iters = sizes(run, 'training')
    half = iters // 2
    spec = ToySpec(num_train=8, num_val=4, seed=1) if run.dry else ToySpec(160, 20)
    data = generate_toy_dataset(run.scratch / 'toy', spec)
    options = [*(f'{split}_dataloader.dataset.data_root={data}' for split in
                 ('train', 'val', 'test')),
               f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
               f'default_hooks.checkpoint.interval={half}', 'default_hooks.logger.interval=1',
               'default_hooks.checkpoint.max_keep_ckpts=-1',
               'default_hooks.checkpoint.save_best=None']
    amp = [] if run.dry else ['--amp']
    if not run.dry:
        options.append('optim_wrapper.dtype=bfloat16')
    env = dict(os.environ, PYTHONWARNINGS='ignore', PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get('PYTHONPATH')])))
    if run.dry:
        env['OMP_NUM_THREADS'] = '1'
    logs = run.out / 'training'
    logs.mkdir(exist_ok=True)
    run.note(f"toy config, {spec.num_train} training / {spec.num_val} validation images, "
             f"{iters} iterations, {'fp32 (no AMP on CPU)' if run.dry else 'AMP bf16'}; logs "
             f'in {logs.name}/; mIoU chance level ~10, threshold {MIN_MIOU:g}')
    first = run.scratch / 'train'
    code, seconds = run_logged([sys.executable, str(ROOT / 'tools' / 'train.py'),
                                str(TOY_CONFIG), '--work-dir', str(first), *amp,
                                '--cfg-options', *options], logs / 'train.log',
                               run.time_left(), env)
    losses = training_row(run, 'tools/train.py', code, seconds, first, logs / 'train.log',
                          iters, 1)
    if run.expired():
        run.skip('the resume through tools/dist_train.sh did not run: the budget ran out')
        return
    checkpoint = first / f'iter_{half}.pth'
    if not checkpoint.is_file():
        run.check('the resume continued from its checkpoint', False,
                  f'the first run wrote no {checkpoint.name} to resume from')
        return
    env['PORT'] = str(free_port())
    resumed = run.scratch / 'resumed'
    log = logs / 'dist_train_resume.log'
    code, seconds = run_logged(['bash', str(ROOT / 'tools' / 'dist_train.sh'), str(TOY_CONFIG),
                                '1', '--work-dir', str(resumed), '--resume', str(checkpoint),
                                *amp, '--cfg-options', *options], log, run.time_left(), env)
    later = training_row(run, 'tools/dist_train.sh CONFIG 1 --resume', code, seconds, resumed,
                         log, iters, half + 1)
    if code is not None:
        run.check('the resume continued from its checkpoint',
                  f'resumed epoch: 0, iter: {half}' in log.read_text(errors='replace')
                  and min(later, default=0) == half + 1,
                  f'first logged iteration {min(later, default=None)}, expected {half + 1}')
    shared = sorted(set(losses) & set(later))
    if shared:
        run.values['max |loss difference| resumed vs straight run'] = max(
            abs(losses[step] - later[step]) for step in shared)


def training_row(run, tool: str, code, seconds: float, work_dir: Path, log: Path, iters: int,
                 first_iter: int) -> dict[int, float]:
    """Record one training run (exit, losses, mIoU) and its checks; returns its losses."""
    losses = logged_losses(work_dir) if work_dir.is_dir() else {}
    miou = last_miou(log.read_text(errors='replace'))
    if code is None:
        run.skip(f'{tool} stopped at its timeout (the rest of the budget, {seconds:.0f} s) '
                 f'after iteration {max(losses, default=0)} of {iters}')
        run.add(tool=tool, exit='timed out', seconds=seconds)
        return losses
    steps = sorted(losses)
    k = max(1, len(steps) // 5)
    start = statistics.mean(losses[s] for s in steps[:k]) if steps else None
    end = statistics.mean(losses[s] for s in steps[-k:]) if steps else None
    run.add(tool=tool, exit=code, seconds=seconds,
            iterations=f'{steps[0]}-{steps[-1]}' if steps else None, loss_start=start,
            loss_end=end, mIoU=miou)
    tail = log.read_text(errors='replace').strip().splitlines()[-1:] or ['(no output)']
    finished = code == 0 and bool(steps) and steps[-1] == iters
    run.check(f'{tool} finished', finished, f'exit {code}, last logged iteration '
              f"{steps[-1] if steps else None} of {iters}" + ('' if finished else
                                                            f'; last line: {tail[0][:200]}'))
    if first_iter == 1:
        run.check(f'{tool}: loss fell', start is not None and end < start,
                  f'mean of the first {k} logged losses {start:.4f}, of the last {k} '
                  f'{end:.4f}' if steps else 'no losses logged')
    if run.dry:
        run.note('the mIoU threshold is not checked in the dry run (a handful of iterations)')
    else:
        run.check(f'{tool}: mIoU well above chance', miou is not None and miou >= MIN_MIOU,
                  f'mIoU {miou} (threshold {MIN_MIOU:g})')
    return losses


# ------------------------------------------------------------------------------ throughput
def throughput(run) -> None:
    """``benchmark_model``'s VOLO-D1 and Swin-T UperNet cases, in this process."""
    batch, size, warmup, repeats = sizes(run, 'throughput')
    args = bm.parse_args(['--device', run.device.type, '--batch', str(batch), '--size',
                          str(size), '--warmup', str(warmup), '--repeats', str(repeats),
                          '--amp'])
    run.note(f'{size}x{size}, batch {batch}, bf16 autocast, median of {repeats} steps after '
             f'{warmup} warm-up; train = forward + CE + backward + AdamW '
             '(benchmark_model.run_case); peak MiB: max_memory_allocated on CUDA, peak RSS on CPU')
    models = {name: dry_config(run, cfg) for name, cfg in bm.MODELS.items()} if run.dry else {}
    cases = [(name, mode) for mode in ('train', 'infer') for name in bm.MODELS]
    results = {}
    with mock.patch.dict(bm.MODELS, models):
        for name, mode in run.within_budget(cases):
            try:
                with quiet():
                    record = bm.run_case(args, name, mode)
                results[name, mode] = run.add(model=name, mode=mode, batch=batch, size=size,
                                              step_ms=record['step_ms'],
                                              images_per_s=record['images_per_s'],
                                              peak_mib=record['peak_mib'],
                                              params_m=record['params_m'])
            except Exception as error:  # noqa: BLE001
                run.add(model=name, mode=mode, error=one_line(error))
            finally:
                release_memory(run.device)
    for mode in ('train', 'infer'):
        volo, swin = results.get(('volo-d1_upernet', mode)), results.get(('swin-t_upernet', mode))
        if volo and swin:
            run.values[f'{mode}: VOLO-D1 / Swin-T images/s'] = (volo['images_per_s']
                                                               / swin['images_per_s'])


# ------------------------------------------------------------------------------ memory
def memory(run) -> None:
    """Peak training memory of VOLO-D1..D5 UperNet at 1024x1024 (dry: tiny D1 at 64x64)."""
    size, batches = sizes(run, 'memory')
    archs = ['D1'] if run.dry else list(MEMORY_CONFIGS)
    run.note(f'{size}x{size}, one training step after one warm-up (segmentor loss with both '
             'heads, bf16 autocast, AdamW); peak = max_memory_allocated / max_memory_reserved '
             f'of the process; fits = reserved <= {LIMIT_GIB:g} GiB (an 80 GB card leaves '
             '~79 GiB after its CUDA context); batch 1 runs BN in eval mode')
    for arch in run.within_budget(archs, 'models'):
        config = str(MEMORY_CONFIGS[arch])
        config = dry_config(run, config) if run.dry else config
        try:
            model = build_model(config, run.device)
        except Exception as error:  # noqa: BLE001
            run.add(model=f'VOLO-{arch} UperNet', error=one_line(error))
            continue
        for batch in batches:
            if run.expired():
                run.skip(f'VOLO-{arch} batch {batch} not run: the budget ran out')
                break
            row = run.add(model=f'VOLO-{arch} UperNet', size=size, batch=batch,
                          **memory_case(model, batch, size, run.device))
            if row.get('oom'):
                break
        model = None
        release_memory(run.device)


def memory_case(model, batch: int, size: int, device: torch.device) -> dict:
    """Peak allocated / reserved GiB of a training step (guarded; CPU: n/a)."""
    try:
        release_memory(device)
        step = segmentor_step(model, batch, size, device)
        step()
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        loss = step()
        bo.sync(device)
        row = dict(step_s=time.perf_counter() - start, loss=loss)
        if device.type != 'cuda':
            return dict(row, peak_gib='n/a (CPU)', ran=True)
        reserved = torch.cuda.max_memory_reserved(device) / 2 ** 30
        return dict(row, peak_gib=torch.cuda.max_memory_allocated(device) / 2 ** 30,
                    reserved_gib=reserved, fits_80gb=reserved <= LIMIT_GIB, ran=True)
    except Exception as error:  # noqa: BLE001
        oom = is_oom(error)
        release_memory(device)
        return dict(ran=False, oom=oom, fits_80gb=False if oom else None,
                    error=one_line(error))
    finally:
        model.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------ profile
def profile(run) -> None:
    """torch.profiler: the top-15 kernels (self time) of VOLO-D1 UperNet training steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    batch, size, warmup = sizes(run, 'profile')
    config = bm.MODELS['volo-d1_upernet']
    model = build_model(dry_config(run, config) if run.dry else config, run.device)
    step = segmentor_step(model, batch, size, run.device)
    for _ in range(warmup):
        step()
    bo.sync(run.device)
    activities = [ProfilerActivity.CPU]
    if run.device.type == 'cuda':
        activities.append(ProfilerActivity.CUDA)
    with profiler(activities=activities) as prof:
        for _ in range(2):
            step()
        bo.sync(run.device)
    averages = prof.key_averages()
    keys = (['self_device_time_total', 'self_cuda_time_total'] if run.device.type == 'cuda'
            else ['self_cpu_time_total'])
    for key in keys:
        try:
            table = averages.table(sort_by=key, row_limit=15)
            break
        except Exception as error:  # noqa: BLE001 - the key's name differs between versions
            table = f'(no table: {one_line(error)})'
    (run.out / 'profile.txt').write_text(table + '\n')
    run.note(f'VOLO-D1 UperNet training step, {size}x{size}, batch {batch}, bf16 autocast, '
             f'2 profiled steps after warm-up; sorted by {key}; also in profile.txt')
    run.block('top 15 by self time', table)
