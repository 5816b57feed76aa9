"""Memory-light pure-PyTorch outlook attention, registered as ``'chunked'``.

Formulation (channels-last, no ``F.unfold`` / ``F.fold``):

* ``v`` is copied once into a zero-padded buffer ``vp`` of shape (B, Hp, Wp, C) so that every
  window position of every output-grid cell is in range.
* The output grid is processed in chunks of whole rows. For a chunk of ``r`` rows, the K*K
  windows are read with one ``as_strided`` view of ``vp`` (overlapping windows are just
  strides) and copied into a (B*r*w*heads, K*K, d) tensor; ``softmax(logits)`` of the chunk
  is multiplied with it by one ``bmm``.
* The fold is an overlap-add: for each window offset (ki, kj) the chunk's results are added
  into the strided slice ``out[:, ki-P::S, kj-P::S]`` (clipped to the image) of the output
  (an fp32 buffer for fp16/bf16). Chunks that touch the same output rows simply add, so no
  halo handling is needed.

Threads: the chunks run on a process-wide pool of worker threads that each compute with
one intra-op thread (``torch.set_num_threads(1)`` holds per thread), as many workers as the
calling thread's ``torch.get_num_threads()`` ($MMVOLO_OUTLOOK_WORKERS overrides it; 1 runs
everything in the calling thread, as do small inputs, see ``MIN_POOL_ELEMS``). Every
multi-threaded torch op is an OpenMP parallel region whose threads wait for each other at
its end; when other processes load the cores one of them is often descheduled and the op
waits for it to run again, and this formulation issues tens of ops per call (measurements:
docs/performance.md, "CPU under load"). Single-threaded ops
never wait for another thread, and the pool synchronises only once per phase (padding, then
the chunks' phases), handing chunks out as workers come free, so a descheduled worker
delays its own chunk only. Chunks whose overlap-adds touch common output rows run in
different phases (chunk i in phase i mod p, see :func:`_num_phases`), so no two threads
ever add into the same element and the result does not depend on the schedule. Workers run
with gradients off; autocast is off in the caller and the workers alike (the op computes in
the dtypes given below). CUDA tensors always run in the calling thread (streams are per
thread).

At most one chunk per worker of unfolded values and of ``attn @ v`` exists at any time.
The op is a ``torch.library.custom_op`` (``mmvolo::outlook_chunked_fwd``/``_bwd``, built by
:func:`~mmvolo.ops.custom_op.define_outlook_op`) with fake kernels and autograd, so
``torch.compile`` keeps it as one opaque node (no graph break; no fusion into it either).
Its backward saves only ``v`` and ``logits`` and recomputes per chunk (forward and backward
share one chunk loop, ``_ChunkPlan.run``):

    gY  = windows(grad_out)                          # (n, K*K, d), gathered like v
    gA  = gY @ Vwin^T ;  glogits = A * (gA - sum_k(gA * A))
    gV  = fold(A^T @ gY)                             # overlap-add like the forward output

Softmax and accumulation run in fp32 for fp16/bf16 inputs (the reference computes them in
the input dtype, so low-precision results differ from it by rounding only); fp32 and fp64
inputs are computed in their own dtype.
"""
from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Sequence
from typing import Callable

import torch

from .custom_op import define_outlook_op
from .local_aggregate import Geometry, geometry_of, local_aggregate
from .outlook import register_outlook_impl
from .tiling import compute_dtype, rows_per_block

CHUNK_ENV_VAR = 'MMVOLO_OUTLOOK_CHUNK_ELEMS'
WORKERS_ENV_VAR = 'MMVOLO_OUTLOOK_WORKERS'
# Elements of the per-chunk unfolded value tensor (B*r*w*C*K*K); the default is a tuned
# trade-off between per-op overhead and the working set (see docs/performance.md).
DEFAULT_CHUNK_ELEMS = 1 << 20
MIN_CHUNKS = 2
#: With worker threads: at least this many chunks per worker in each phase, so that a
#: worker that is descheduled for a while leaves the remaining chunks to the others.
CHUNKS_PER_WORKER = 2
#: Calls with fewer unfolded-value elements (B*h*w*C*K*K) run in the calling thread: handing
#: work to the pool and back costs more than it saves there.
MIN_POOL_ELEMS = 1 << 18
#: 'auto' prefers it to the reference (any tensors), and a fused kernel to it.
PRIORITY = 10


def _windows(xp: torch.Tensor, row0: int, rows: int, w: int, num_heads: int,
             kernel_size: int, stride: int) -> torch.Tensor:
    """Gather the K*K windows of output rows [row0, row0+rows) -> (B*rows*w*heads, K*K, d)."""
    batch, _, _, channels = xp.shape
    sb, sh, sw, sc = xp.stride()
    head_dim = channels // num_heads
    view = xp.as_strided(
        (batch, rows, w, num_heads, kernel_size, kernel_size, head_dim),
        (sb, stride * sh, stride * sw, head_dim * sc, sh, sw, sc),
        xp.storage_offset() + row0 * stride * sh)
    return view.reshape(-1, kernel_size * kernel_size, head_dim)


def _overlap_add(dst: torch.Tensor, y: torch.Tensor, geom: Geometry, row0: int,
                 rows: int) -> None:
    """Fold: add y (B*rows*w*heads, K*K, d) of grid rows [row0, row0 + rows) into dst (B, H,
    W, C) in place, each tap onto its in-image positions (:meth:`Geometry.tap_slices`)."""
    head_dim = y.shape[-1]
    y = y.view(geom.batch, rows, geom.out_w, -1, geom.taps, head_dim)
    heads = y.shape[3]
    for k in range(geom.taps):
        slices = geom.tap_slices(k, (row0, row0 + rows))
        if slices is None:
            continue
        (out_rows, out_cols), (in_rows, in_cols) = slices
        target = dst[:, in_rows, in_cols].unflatten(-1, (heads, head_dim))
        target.add_(y[:, out_rows.start - row0:out_rows.stop - row0, out_cols, :, k])


def _chunk_rows(batch: int, w: int, channels: int, kernel_size: int, stride: int, h: int,
                workers: int) -> int:
    """Output-grid rows per chunk: ceil(h / n) for n chunks, n = total / budget but at least 2
    (keeps the peak below the reference's even for small inputs) and, with worker threads,
    at least CHUNKS_PER_WORKER per worker in every phase. Setting
    $MMVOLO_OUTLOOK_CHUNK_ELEMS (elements of one chunk's unfolded values) bypasses both."""
    min_chunks = MIN_CHUNKS
    if workers > 1:
        min_chunks = max(min_chunks,
                         CHUNKS_PER_WORKER * workers * (2 if kernel_size > stride else 1))
    return rows_per_block(h, batch * w * channels * kernel_size * kernel_size,
                          DEFAULT_CHUNK_ELEMS, min_blocks=min_chunks, env_var=CHUNK_ENV_VAR)


def _num_phases(rows: int, kernel_size: int, stride: int) -> int:
    """Phases p such that chunks i and i + p (``rows`` grid rows each) never add into a common
    output row: chunk i covers output rows [a*S - P, (a + rows - 1)*S - P + K) for its first
    grid row a, so they are disjoint iff (p - 1) * rows * S >= K - S."""
    return 1 + -(-max(kernel_size - stride, 0) // (rows * stride))


def _num_workers(device: torch.device, total: int) -> int:
    """Worker threads for a call with ``total`` unfolded-value elements: 1 (this thread) off
    the CPU (CUDA streams are per thread); else $MMVOLO_OUTLOOK_WORKERS if set, else
    torch.get_num_threads(), or 1 below MIN_POOL_ELEMS."""
    if device.type != 'cpu':
        return 1
    override = os.environ.get(WORKERS_ENV_VAR)
    if override:
        return max(1, int(override))
    return torch.get_num_threads() if total >= MIN_POOL_ELEMS else 1


class _WorkerPool:
    """Process-wide thread pool whose threads compute with one intra-op thread each.

    ``torch.set_num_threads`` sets the calling thread's OpenMP and MKL thread counts and a
    process-wide default that threads adopt on their first parallel op. A worker first
    adopts that default (``torch.get_num_threads()``), then sets its own count to 1; the
    thread that created the pool then puts the default back to its own count. Recreated after
    ``fork`` (threads do not survive it) and when the requested size changes.
    """

    _lock = threading.Lock()
    _executor: concurrent.futures.ThreadPoolExecutor | None = None
    _size = 0
    _pid = -1

    @classmethod
    def get(cls, size: int) -> concurrent.futures.ThreadPoolExecutor:
        with cls._lock:
            if cls._executor is None or cls._size != size or cls._pid != os.getpid():
                if cls._executor is not None and cls._pid == os.getpid():
                    cls._executor.shutdown(wait=False)
                cls._executor = cls._start(size)
                cls._size, cls._pid = size, os.getpid()
            return cls._executor

    @staticmethod
    def _start(size: int) -> concurrent.futures.ThreadPoolExecutor:
        own_threads = torch.get_num_threads()
        executor = concurrent.futures.ThreadPoolExecutor(
            size, thread_name_prefix='mmvolo-outlook', initializer=_single_threaded)
        started = threading.Barrier(size + 1)
        futures = [executor.submit(started.wait) for _ in range(size)]  # one per thread
        started.wait()
        concurrent.futures.wait(futures)
        torch.set_num_threads(own_threads)  # the process-wide default, as before
        return executor


def _single_threaded() -> None:
    """Worker initializer: adopt the process default first, then one intra-op thread here."""
    torch.get_num_threads()
    torch.set_num_threads(1)


def _in_worker(fn: Callable, item: object) -> None:
    with torch.no_grad():
        fn(item)


def _run(fn: Callable, items: Sequence, workers: int) -> None:
    """``fn(item)`` for every item: on the worker pool, or in this thread for one worker or
    one item. Returns once all are done; then raises the first error, if any."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            fn(item)
        return
    pool = _WorkerPool.get(workers)
    futures = [pool.submit(_in_worker, fn, item) for item in items]
    concurrent.futures.wait(futures)
    for future in futures:
        future.result()


def _fill_rows(xp: torch.Tensor, x: torch.Tensor, rows: range, padding: int) -> None:
    """Rows ``rows`` of the zero-padded buffer ``xp`` of ``x`` (image at offset (P, P))."""
    height, width = x.shape[1:3]
    lo, hi = max(rows.start, padding), min(rows.stop, padding + height)
    if hi <= lo:
        xp[:, rows.start:rows.stop].zero_()
        return
    xp[:, rows.start:lo].zero_()
    xp[:, hi:rows.stop].zero_()
    inner = xp[:, lo:hi]
    inner[:, :, :padding].zero_()
    inner[:, :, padding + width:].zero_()
    inner[:, :, padding:padding + width].copy_(x[:, lo - padding:hi - padding])


def _split(size: int, parts: int) -> list[range]:
    """[0, size) in ``parts`` contiguous ranges (fewer when size is smaller), in order."""
    step = max(1, -(-size // max(parts, 1)))
    return [range(start, min(start + step, size)) for start in range(0, size, step)]


def _attn(logits: torch.Tensor, row0: int, rows: int, kk: int,
          dtype: torch.dtype) -> torch.Tensor:
    """Softmax over k_in of the chunk's logits -> (B*rows*w*heads, K*K, K*K) in ``dtype``."""
    chunk = logits[:, row0:row0 + rows].reshape(-1, kk, kk).to(dtype)
    return _softmax_last(chunk)


def _softmax_last(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last dim (K*K = 9) from elementwise ops and small reductions.

    ``Tensor.softmax`` on CPU is ~20x slower than this when the softmax dim is this short
    (measured: 38 ms vs 1.6 ms for 98k x 9 x 9 fp32 on one core), as it vectorizes along it.
    """
    e = (x - x.amax(dim=-1, keepdim=True)).exp_()
    return e.div_(e.sum(dim=-1, keepdim=True))


class _ChunkPlan:
    """Geometry of one call, shared by forward and backward: the padded buffers' size, the
    compute dtype and the split of the output grid into chunks of whole rows."""

    def __init__(self, v: torch.Tensor, num_heads: int, kernel_size: int, padding: int,
                 stride: int) -> None:
        self.geom = geometry_of(v.shape, kernel_size, stride, padding, 1, 'zeros')
        self.batch, channels = self.geom.batch, self.geom.channels
        self.h, self.w = self.geom.out_h, self.geom.out_w
        self.hp, self.wp = self.geom.padded_size()
        self.dtype = compute_dtype(v.dtype)
        self.num_heads, self.kernel_size = num_heads, kernel_size
        self.padding, self.stride = padding, stride
        self.workers = _num_workers(v.device,
                                    self.batch * self.h * self.w * channels * kernel_size ** 2)
        self.step = _chunk_rows(self.batch, self.w, channels, kernel_size, stride, self.h,
                                self.workers)
        self.phases = _num_phases(self.step, kernel_size, stride)

    def buffers(self, padded: Sequence[torch.Tensor],
                zeroed: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Zero-padded copies of ``padded`` (each (B, H, W, C), in a buffer covering every
        window, in the compute dtype), then compute-dtype zero tensors shaped like ``zeroed``;
        filled in row ranges by the workers."""
        pads = [x.new_empty(self.batch, self.hp, self.wp, x.shape[-1], dtype=self.dtype)
                for x in padded]
        zeros = [x.new_empty(x.shape, dtype=self.dtype) for x in zeroed]
        parts = self.workers if self.workers > 1 else 1

        def fill(part: int) -> None:
            for xp, x in zip(pads, padded):
                rows = _split(self.hp, parts)
                if part < len(rows):
                    _fill_rows(xp, x, rows[part], self.padding)
            for zero in zeros:
                rows = _split(zero.shape[1], parts)
                if part < len(rows):
                    zero[:, rows[part].start:rows[part].stop].zero_()

        _run(fill, range(parts), self.workers)
        return pads + zeros

    def run(self, fn: Callable[[range, torch.Tensor], None], logits: torch.Tensor) -> None:
        """``fn(grid rows of the chunk, softmax of its logits (n, K*K, K*K))`` for every chunk:
        phase by phase, the chunks of one phase in any order (on the workers)."""
        kk = self.kernel_size * self.kernel_size
        chunks = [range(row0, min(row0 + self.step, self.h))
                  for row0 in range(0, self.h, self.step)]

        def one(rows: range) -> None:
            fn(rows, _attn(logits, rows.start, len(rows), kk, self.dtype))

        for phase in range(self.phases):
            _run(one, chunks[phase::self.phases], self.workers)

    def windows(self, xp: torch.Tensor, rows: range) -> torch.Tensor:
        """The K*K windows of padded ``xp`` for grid ``rows`` -> (n, K*K, d)."""
        return _windows(xp, rows.start, len(rows), self.w, self.num_heads, self.kernel_size,
                        self.stride)

    def overlap_add(self, dst: torch.Tensor, y: torch.Tensor, rows: range) -> None:
        """Fold the chunk's ``y`` (n, K*K, d) into ``dst`` (B, H, W, C) in place."""
        _overlap_add(dst, y, self.geom, rows.start, len(rows))


def _no_autocast(v: torch.Tensor) -> torch.autocast:
    """Autocast off, so the op computes in the dtypes documented above in the calling thread
    as in the workers (which never inherit the caller's autocast state)."""
    return torch.autocast(v.device.type, enabled=False)


def chunked_forward(v: torch.Tensor, logits: torch.Tensor, num_heads: int, kernel_size: int,
                    padding: int, stride: int) -> torch.Tensor:
    """Forward without autograd bookkeeping; shapes as in :func:`outlook_attention_chunked`."""
    plan = _ChunkPlan(v, num_heads, kernel_size, padding, stride)
    with _no_autocast(v):
        vp, out = plan.buffers([v], [v])

        def chunk(rows: range, attn: torch.Tensor) -> None:
            plan.overlap_add(out, torch.bmm(attn, plan.windows(vp, rows)), rows)

        plan.run(chunk, logits)
        return out.to(v.dtype)


def chunked_backward(grad_out: torch.Tensor, v: torch.Tensor, logits: torch.Tensor,
                     num_heads: int, kernel_size: int, padding: int, stride: int,
                     need_v: bool = True,
                     need_logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients (grad_v (B, H, W, C), grad_logits (B, h, w, heads*K^4)), recomputed per chunk."""
    plan = _ChunkPlan(v, num_heads, kernel_size, padding, stride)
    with _no_autocast(v):
        vp, gp, *rest = plan.buffers([v, grad_out], [v] if need_v else [])
        grad_v = rest[0] if need_v else None
        grad_logits = logits.new_empty(logits.shape) if need_logits else None

        def chunk(rows: range, attn: torch.Tensor) -> None:
            gy = plan.windows(gp, rows)
            if need_logits:
                ga = torch.bmm(gy, plan.windows(vp, rows).transpose(1, 2))
                gl = attn * (ga - (ga * attn).sum(dim=-1, keepdim=True))
                grad_logits[:, rows.start:rows.stop] = gl.view(plan.batch, len(rows), plan.w,
                                                               -1)
            if need_v:
                plan.overlap_add(grad_v, torch.bmm(attn.transpose(1, 2), gy), rows)

        plan.run(chunk, logits)
        return (None if grad_v is None else grad_v.to(v.dtype)), grad_logits


_chunked_op = define_outlook_op('mmvolo::outlook_chunked', chunked_forward, chunked_backward)


def chunked_fold(v: torch.Tensor, logits: torch.Tensor, num_heads: int, kernel_size: int,
                 padding: int, stride: int) -> torch.Tensor:
    """The kernel (one custom op): v (B, H, W, C), logits (B, h, w, heads*K^4) -> (B, H, W,
    C); :mod:`.local_aggregate_kernels` calls it for outlook's configuration."""
    return _chunked_op(v, logits, num_heads, kernel_size, padding, stride)


@register_outlook_impl('chunked', priority=PRIORITY)
def outlook_attention_chunked(v: torch.Tensor, logits: torch.Tensor, num_heads: int,
                              kernel_size: int = 3, padding: int = 1,
                              stride: int = 1) -> torch.Tensor:
    """Outlook attention as its ``local_aggregate`` configuration (``fold=True``,
    ``normalize='softmax'``, ``impl='fast'``, which runs :func:`chunked_fold`).

    Args:
        v: values, (B, H, W, C).
        logits: scaled attention logits, (B, ceil(H/S), ceil(W/S), num_heads * K**4).
        num_heads, kernel_size, padding, stride: as in the reference.

    Returns:
        (B, H, W, C) in ``v.dtype``.
    """
    kk = kernel_size * kernel_size
    weight = logits.view(*logits.shape[:3], num_heads, kk, kk)
    return local_aggregate(v, weight, kernel_size, stride=stride, padding=padding,
                           groups=num_heads, normalize='softmax', fold=True, impl='fast')


__all__ = ['outlook_attention_chunked', 'chunked_fold', 'chunked_forward', 'chunked_backward',
           'CHUNK_ENV_VAR', 'WORKERS_ENV_VAR', 'DEFAULT_CHUNK_ELEMS']
