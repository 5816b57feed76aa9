"""Outlook attention implementations vs the reference, the reference vs the paper formula, and
the dispatcher that picks among them.

Ladder of trust:
1. ``literal_outlook_attention`` (tests/literal_outlook.py) is a literal transcription of
   VOLO Eq. 3-5 (loops over output-grid cells, heads and window offsets; scalar-ish torch
   ops; tiny inputs only).
2. The reference impl equals it (values and gradients) and passes ``gradcheck`` in float64.
3. Every other impl equals the reference: fp32 values and grads within 1e-5, fp16/bf16 within
   the tolerances in ``LOW_PRECISION_TOL`` (measured against the fp32 reference evaluated on
   the same, already rounded, inputs; the fast impls soft-max and accumulate in fp32, so the
   error is dominated by rounding the output to 8 (bf16) or 11 (fp16) mantissa bits).

The Triton impl runs under Triton's interpreter, which must be switched on before triton is
first imported, so its cases run in one subprocess (this file with ``--triton-worker``) and
the parametrized tests read that subprocess's results.

Dispatcher (``mmvolo.ops.outlook`` on ``mmvolo.ops.dispatch``, which names no implementation):
``'auto'`` is the highest-priority registered impl whose ``supports`` accepts the tensors (a
test registers a fourth impl to show it is picked, and passed over where unsupported), and is
logged at debug level; an explicitly requested impl (argument or env var) that cannot run -
unsupported tensors, or a known optional impl that is unavailable - warns once per (impl,
reason), naming both and what runs instead, and the ``'auto'`` choice runs; unknown names are
a one-line ValueError listing the registered names; all of it traces under
``torch.compile(fullgraph=True)``. ``define_outlook_op`` turns any forward/backward pair into
a differentiable, compilable custom op.
"""
from __future__ import annotations

import importlib
import json
import logging
import math
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch
from literal_outlook import literal_outlook_attention

from mmvolo.ops import (
    IMPL_ENV_VAR,
    OutlookImplFallbackWarning,
    available_impls,
    known_impls,
    outlook_attention,
    outlook_attention_reference,
    temporary_outlook_impl,
)
from mmvolo.ops.custom_op import define_outlook_op
from mmvolo.ops.outlook import select_impl
from mmvolo.ops.outlook_chunked import (
    CHUNK_ENV_VAR,
    WORKERS_ENV_VAR,
    chunked_backward,
    outlook_attention_chunked,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZES = [(7, 5), (9, 13), (1, 1), (2, 3), (33, 17)]
STRIDES = [1, 2]
HEADS = [1, 2, 3]
LOW_PRECISION_TOL = {torch.bfloat16: 2e-2, torch.float16: 3e-3}  # atol == rtol
# the module; the package attribute of the same name is the function
dispatcher = importlib.import_module('mmvolo.ops.outlook')
chunked_module = importlib.import_module('mmvolo.ops.outlook_chunked')
# (H, W, stride, heads); batch 1, head_dim 2, K=3, P=1. The interpreter pays ~0.3 s per
# program (one per head and block of 128 pixels or cells), so several heads appear in two
# cases, several blocks in the last; the dtype cases run one head.
TRITON_CASES = [(7, 5, 2, 2), (5, 9, 1, 3), (1, 1, 2, 1), (2, 3, 1, 1), (33, 17, 2, 1)]


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------

def make_inputs(height: int, width: int, stride: int, heads: int, head_dim: int = 2,
                batch: int = 2, kernel_size: int = 3, dtype: torch.dtype = torch.float32,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (v, logits, grad_out) for one case, logits scaled like VOLO's (~N(0, 1))."""
    gen = torch.Generator().manual_seed(seed)
    h, w = math.ceil(height / stride), math.ceil(width / stride)
    v = torch.randn(batch, height, width, heads * head_dim, generator=gen)
    logits = torch.randn(batch, h, w, heads * kernel_size ** 4, generator=gen)
    grad = torch.randn(batch, height, width, heads * head_dim, generator=gen)
    return v.to(dtype), logits.to(dtype), grad.to(dtype)


def value_and_grads(fn, v: torch.Tensor, logits: torch.Tensor, grad: torch.Tensor,
                    *args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, grad_v, grad_logits) of ``fn(v, logits, *args)`` for upstream gradient ``grad``."""
    v = v.detach().clone().requires_grad_()
    logits = logits.detach().clone().requires_grad_()
    out = fn(v, logits, *args)
    grad_v, grad_logits = torch.autograd.grad(out, (v, logits), grad)
    return out.detach(), grad_v, grad_logits


def max_errors(got, want) -> list[float]:
    return [(g.float() - w.float()).abs().max().item() for g, w in zip(got, want)]


# ------------------------------------------------------------------------------------------
# Reference vs the literal formula
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('height,width,stride,heads', [(3, 4, 1, 1), (5, 3, 2, 2), (1, 2, 2, 1),
                                                       (4, 4, 2, 1)])
def test_reference_matches_loop_formula(height, width, stride, heads):
    v, logits, grad = make_inputs(height, width, stride, heads, batch=1, dtype=torch.float64)
    want = value_and_grads(literal_outlook_attention, v, logits, grad, heads, 3, 1, stride)
    got = value_and_grads(outlook_attention_reference, v, logits, grad, heads, 3, 1, stride)
    assert max(max_errors(got, want)) < 1e-12


@pytest.mark.parametrize('fn', [outlook_attention_reference, outlook_attention_chunked],
                         ids=['reference', 'chunked'])
@pytest.mark.parametrize('stride', STRIDES)
def test_gradcheck_float64(fn, stride, monkeypatch):
    monkeypatch.setenv(CHUNK_ENV_VAR, '1')  # one grid row per chunk
    v, logits, _ = make_inputs(3, 2, stride, 1, batch=1, dtype=torch.float64)
    v.requires_grad_()
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, 1, 3, 1, stride), (v, logits))


# ------------------------------------------------------------------------------------------
# Chunked vs reference
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('chunk_elems', ['1', '4096', None], ids=['row', 'small', 'default'])
@pytest.mark.parametrize('heads', HEADS)
@pytest.mark.parametrize('stride', STRIDES)
@pytest.mark.parametrize('height,width', SIZES)
def test_chunked_matches_reference_fp32(height, width, stride, heads, chunk_elems, monkeypatch):
    if chunk_elems is not None:
        monkeypatch.setenv(CHUNK_ENV_VAR, chunk_elems)
    v, logits, grad = make_inputs(height, width, stride, heads)
    want = value_and_grads(outlook_attention_reference, v, logits, grad, heads, 3, 1, stride)
    got = value_and_grads(outlook_attention_chunked, v, logits, grad, heads, 3, 1, stride)
    assert max(max_errors(got, want)) < 1e-5


@pytest.mark.parametrize('kernel_size,padding,stride', [(1, 0, 1), (5, 2, 2), (5, 2, 1)])
# the reference (F.unfold) needs (H + 2P - K) // S + 1 == ceil(H / S), so P = (K - 1) / 2
def test_chunked_other_windows(kernel_size, padding, stride, monkeypatch):
    monkeypatch.setenv(CHUNK_ENV_VAR, '64')
    v, logits, grad = make_inputs(9, 7, stride, 2, kernel_size=kernel_size)
    args = (2, kernel_size, padding, stride)
    want = value_and_grads(outlook_attention_reference, v, logits, grad, *args)
    got = value_and_grads(outlook_attention_chunked, v, logits, grad, *args)
    assert max(max_errors(got, want)) < 1e-5


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('stride', STRIDES)
def test_chunked_low_precision(dtype, stride):
    v, logits, grad = make_inputs(9, 13, stride, 3, head_dim=4, dtype=dtype)
    want = value_and_grads(outlook_attention_reference, v.float(), logits.float(), grad.float(),
                           3, 3, 1, stride)
    got = value_and_grads(outlook_attention_chunked, v, logits, grad, 3, 3, 1, stride)
    tol = LOW_PRECISION_TOL[dtype]
    for g, w in zip(got, want):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), w, atol=tol, rtol=tol)


def test_chunked_keeps_no_grad_graph_free():
    v, logits, _ = make_inputs(5, 6, 2, 2)
    with torch.no_grad():
        out = outlook_attention_chunked(v.requires_grad_(), logits, 2, 3, 1, 2)
    assert out.grad_fn is None


@pytest.mark.parametrize('workers', ['2', '3'])
@pytest.mark.parametrize('chunk_elems', ['1', None], ids=['row', 'default'])
@pytest.mark.parametrize('height,width,stride,kernel_size', [
    (33, 17, 1, 3), (33, 17, 2, 3), (9, 13, 2, 3), (2, 3, 1, 3), (9, 7, 1, 5), (9, 7, 2, 5)])
def test_chunked_on_workers_matches_reference(height, width, stride, kernel_size, chunk_elems,
                                              workers, monkeypatch):
    """Chunks on the worker pool (phases keep overlapping chunks apart) equal the reference;
    repeated runs are bitwise equal (the schedule does not change the result)."""
    monkeypatch.setenv(WORKERS_ENV_VAR, workers)
    if chunk_elems is not None:
        monkeypatch.setenv(CHUNK_ENV_VAR, chunk_elems)
    v, logits, grad = make_inputs(height, width, stride, 2, kernel_size=kernel_size)
    args = (2, kernel_size, (kernel_size - 1) // 2, stride)
    want = value_and_grads(outlook_attention_reference, v, logits, grad, *args)
    got = value_and_grads(outlook_attention_chunked, v, logits, grad, *args)
    assert max(max_errors(got, want)) < 1e-5
    for _ in range(3):
        again = value_and_grads(outlook_attention_chunked, v, logits, grad, *args)
        assert all(torch.equal(a, b) for a, b in zip(again, got))


def test_chunked_workers_single_threaded_and_caller_threads_kept(monkeypatch):
    """Workers compute with one intra-op thread; the caller's count and the default a new
    thread gets stay as they were."""
    def new_thread_threads() -> int:
        result = []
        thread = threading.Thread(target=lambda: result.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        return result[0]

    before, fresh_before = torch.get_num_threads(), new_thread_threads()
    for workers in ('3', '2'):  # a new size starts a new pool
        monkeypatch.setenv(WORKERS_ENV_VAR, workers)
        v, logits, grad = make_inputs(9, 13, 2, 2)
        value_and_grads(outlook_attention_chunked, v, logits, grad, 2, 3, 1, 2)
        pool = chunked_module._WorkerPool.get(int(workers))
        counts = [pool.submit(torch.get_num_threads) for _ in range(8)]
        assert [count.result() for count in counts] == [1] * 8
        assert torch.get_num_threads() == before
        assert new_thread_threads() == fresh_before


@pytest.mark.parametrize('workers', ['1', '2'])
def test_chunked_ignores_autocast(workers, monkeypatch):
    """fp32 inputs are computed in fp32 under CPU autocast too, in this thread and on the
    workers alike (workers never see the caller's autocast state)."""
    monkeypatch.setenv(WORKERS_ENV_VAR, workers)
    v, logits, grad = make_inputs(9, 13, 2, 2)
    want = value_and_grads(outlook_attention_chunked, v, logits, grad, 2, 3, 1, 2)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = value_and_grads(outlook_attention_chunked, v, logits, grad, 2, 3, 1, 2)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_chunked_worker_error_reaches_caller():
    done = []

    def task(item: int) -> None:
        if item == 1:
            raise RuntimeError('chunk failed')
        done.append(item)

    with pytest.raises(RuntimeError, match='chunk failed'):
        chunked_module._run(task, [0, 1, 2, 3], workers=2)
    assert sorted(done) == [0, 2, 3]  # the others finished before the error was raised


def _forked_child(queue) -> None:
    # as DataLoader workers do: OpenMP regions of a forked child of a process that ran some
    # hang (libgomp), whatever the outlook impl
    torch.set_num_threads(1)
    v, logits, grad = make_inputs(9, 13, 2, 2)
    got = value_and_grads(outlook_attention_chunked, v, logits, grad, 2, 3, 1, 2)
    want = value_and_grads(outlook_attention_reference, v, logits, grad, 2, 3, 1, 2)
    queue.put(max(max_errors(got, want)))


def _fork_scenario() -> None:
    """The parent runs chunked on its pool, then forks a child that runs it too; exits 0
    when the child finished with the reference's result."""
    import multiprocessing

    v, logits, grad = make_inputs(9, 13, 2, 2)
    value_and_grads(outlook_attention_chunked, v, logits, grad, 2, 3, 1, 2)  # parent's pool
    context = multiprocessing.get_context('fork')
    queue = context.Queue()
    child = context.Process(target=_forked_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        sys.exit('the forked child hung running chunked on workers')
    if child.exitcode != 0:
        sys.exit(f'the forked child failed (exit code {child.exitcode})')
    error = queue.get(timeout=5)
    if not error < 1e-5:
        sys.exit(f'the forked child computed a different result (max error {error})')


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs fork')
def test_chunked_workers_after_fork():
    """A forked child (e.g. a DataLoader worker) starts its own pool instead of waiting on
    the parent's threads, which it does not have ($MMVOLO_OUTLOOK_WORKERS=2 forces a pool
    even though the child computes with one thread). In a fresh interpreter: a parent that
    already ran autograd on other threads (as earlier tests in this process may have) makes
    torch refuse backward in any forked child, whatever the op."""
    import subprocess

    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, **{WORKERS_ENV_VAR: '2'},
               PYTHONPATH=os.pathsep.join([tests, os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run(
        [sys.executable, '-c', 'import test_ops_outlook_impls as t; t._fork_scenario()'],
        env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]


# ------------------------------------------------------------------------------------------
# Triton (interpreter, in a subprocess)
# ------------------------------------------------------------------------------------------

def _triton_worker() -> None:
    """Run every TRITON_CASES case through the triton impl; print max errors as JSON."""
    from mmvolo.ops.outlook_triton import outlook_attention_triton
    results = {}
    for height, width, stride, heads in TRITON_CASES:
        v, logits, grad = make_inputs(height, width, stride, heads, batch=1)
        want = value_and_grads(outlook_attention_reference, v, logits, grad, heads, 3, 1, stride)
        got = value_and_grads(outlook_attention_triton, v, logits, grad, heads, 3, 1, stride)
        results[f'{height}x{width}s{stride}h{heads}'] = max_errors(got, want)
    for dtype in (torch.bfloat16, torch.float16):
        v, logits, grad = make_inputs(7, 5, 2, 1, head_dim=4, batch=1, dtype=dtype)
        want = value_and_grads(outlook_attention_reference, v.float(), logits.float(),
                               grad.float(), 1, 3, 1, 2)
        got = value_and_grads(outlook_attention_triton, v, logits, grad, 1, 3, 1, 2)
        scaled = [((g.float() - w).abs() / (1 + w.abs())).max().item()
                  for g, w in zip(got, want)]
        results[str(dtype)] = scaled + [str(t.dtype) for t in got]
    results['explicit_cpu_interpreted'] = select_impl(v, 'triton', logits)
    results['auto_cpu_interpreted'] = select_impl(v, 'auto', logits)
    print('RESULTS ' + json.dumps(results))


@pytest.fixture(scope='module')
def triton_results() -> dict:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        pytest.skip(f'triton is not importable: {exc}')
    env = dict(os.environ, TRITON_INTERPRET='1',
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get('PYTHONPATH', '')]))
    env.pop(IMPL_ENV_VAR, None)
    proc = subprocess.run([sys.executable, __file__, '--triton-worker'], env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULTS ')]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(lines[-1][len('RESULTS '):])


@pytest.mark.slow(seconds=4)  # x5 cases: the fixture, Triton's interpreter in a fresh interpreter
@pytest.mark.parametrize('case', [f'{h}x{w}s{s}h{n}' for h, w, s, n in TRITON_CASES])
def test_triton_matches_reference_fp32(triton_results, case):
    assert max(triton_results[case]) < 1e-5, triton_results[case]


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_triton_low_precision(triton_results, dtype):
    *errors, out_dtype, gv_dtype, gl_dtype = triton_results[str(dtype)]
    assert out_dtype == gv_dtype == gl_dtype == str(dtype)
    assert max(errors) < 2 * LOW_PRECISION_TOL[dtype], errors


def test_triton_claims_cpu_tensors_when_interpreted(triton_results):
    assert triton_results['explicit_cpu_interpreted'] == 'triton'
    assert triton_results['auto_cpu_interpreted'] == 'triton'  # highest priority that runs


# ------------------------------------------------------------------------------------------
# Dispatcher
# ------------------------------------------------------------------------------------------

@pytest.fixture
def fresh_warnings(monkeypatch):
    """Forget which fallbacks were already warned about (the dispatcher warns once each)."""
    monkeypatch.setattr(dispatcher.OUTLOOK_IMPLS, 'warned', set())


def float32_only(v: torch.Tensor, logits: torch.Tensor) -> str | None:
    return None if v.dtype == torch.float32 else f'{v.dtype} input (test impl: float32 only)'


@pytest.fixture
def float32_only_impl():
    """'wrapped': the reference, registered above every impl, supporting float32 only."""
    with temporary_outlook_impl('wrapped', outlook_attention_reference, float32_only, 10 ** 6):
        yield 'wrapped'


def test_impl_names():
    assert {'reference', 'chunked', 'triton'} <= set(known_impls())
    names = available_impls()
    assert {'reference', 'chunked'} <= set(names)
    try:
        import triton  # noqa: F401
        assert 'triton' in names
    except ImportError:
        assert 'triton' not in names  # known (accepted, falls back) but not available


def test_dispatcher_names_no_implementation():
    source = Path(dispatcher.__file__).read_text()
    for name in known_impls():
        assert f"'{name}'" not in source and f'"{name}"' not in source, name


def test_auto_on_cpu_picks_chunked(monkeypatch):
    monkeypatch.delenv(IMPL_ENV_VAR, raising=False)
    v, logits, _ = make_inputs(4, 4, 2, 1)
    assert select_impl(v, None, logits) == 'chunked'
    assert select_impl(v, 'auto', logits) == 'chunked'


def test_env_var_selects_impl(monkeypatch):
    v, logits, _ = make_inputs(4, 4, 2, 1)
    monkeypatch.setenv(IMPL_ENV_VAR, 'reference')
    assert select_impl(v, None, logits) == 'reference'
    assert select_impl(v, 'chunked', logits) == 'chunked'  # argument beats env var
    monkeypatch.setenv(IMPL_ENV_VAR, 'nope')
    with pytest.raises(ValueError, match=f"outlook attention: unknown impl 'nope' .{IMPL_ENV_VAR}"):
        outlook_attention(v, logits, 1, 3, 1, 2)


def test_bad_impl_name_is_one_line_listing_registered_names():
    v, logits, _ = make_inputs(4, 4, 2, 1)
    with pytest.raises(ValueError, match="'fast'") as info:
        outlook_attention(v, logits, 1, 3, 1, 2, impl='fast')
    message = str(info.value)
    assert '\n' not in message
    assert message.endswith('choose one of ' + ', '.join(['auto', *known_impls()]))


def test_auto_picks_highest_priority_supporting_impl(monkeypatch):
    """A fourth impl is one registration: 'auto' takes it where it can run, else passes it
    over; unregistering restores the previous choice."""
    monkeypatch.delenv(IMPL_ENV_VAR, raising=False)
    calls = []

    def wrapped_reference(v, logits, num_heads, kernel_size, padding, stride):
        calls.append(v.dtype)
        return outlook_attention_reference(v, logits, num_heads, kernel_size, padding, stride)

    v, logits, _ = make_inputs(7, 5, 2, 2)
    with temporary_outlook_impl('wrapped', wrapped_reference, float32_only, priority=10 ** 6):
        assert 'wrapped' in available_impls()
        assert select_impl(v, None, logits) == 'wrapped'
        out = outlook_attention(v, logits, 2, 3, 1, 2)
        assert calls == [torch.float32]
        torch.testing.assert_close(out, outlook_attention_reference(v, logits, 2, 3, 1, 2))
        assert select_impl(v.double(), 'auto', logits.double()) == 'chunked'
        outlook_attention(v.double(), logits.double(), 2, 3, 1, 2)
        assert calls == [torch.float32]
    assert 'wrapped' not in known_impls()
    assert select_impl(v, None, logits) == 'chunked'


def test_auto_choice_logged_at_debug(float32_only_impl, caplog, monkeypatch):
    monkeypatch.delenv(IMPL_ENV_VAR, raising=False)
    v, logits, _ = make_inputs(4, 4, 2, 1)
    with caplog.at_level(logging.DEBUG, logger='mmvolo.ops'):
        assert select_impl(v.double(), None, logits.double()) == 'chunked'
    messages = [r.getMessage() for r in caplog.records if r.name == 'mmvolo.ops']
    assert len(messages) == 1 and "'auto' chose 'chunked'" in messages[0], messages
    assert "'wrapped': torch.float64 input (test impl: float32 only)" in messages[0]


def test_explicit_impl_that_cannot_run_warns_once_per_reason(float32_only_impl, fresh_warnings):
    v, logits, _ = make_inputs(4, 4, 2, 1)
    with pytest.warns(OutlookImplFallbackWarning) as record:
        out = outlook_attention(v.double(), logits.double(), 1, 3, 1, 2, impl='wrapped')
    assert len(record) == 1
    message = str(record[0].message)
    assert "impl 'wrapped' (from impl=) cannot run here" in message
    assert 'torch.float64 input (test impl: float32 only)' in message  # why
    assert "running 'chunked'" in message  # what runs instead
    assert record[0].filename == __file__  # points at the caller
    torch.testing.assert_close(out, outlook_attention_reference(
        v.double(), logits.double(), 1, 3, 1, 2))
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter('always')
        assert select_impl(v.double(), 'wrapped', logits.double()) == 'chunked'
        assert select_impl(v, 'wrapped', logits) == 'wrapped'  # runs: nothing to say
    assert again == []
    with pytest.warns(OutlookImplFallbackWarning, match='torch.float16 input'):
        select_impl(v.half(), 'wrapped', logits.half())  # another reason warns again


def test_env_var_request_that_cannot_run_warns(float32_only_impl, fresh_warnings, monkeypatch):
    monkeypatch.setenv(IMPL_ENV_VAR, 'wrapped')
    v, logits, _ = make_inputs(4, 4, 2, 1)
    with pytest.warns(OutlookImplFallbackWarning, match=f"'wrapped' .from {IMPL_ENV_VAR}"):
        assert select_impl(v.double(), None, logits.double()) == 'chunked'


def test_unavailable_optional_impl_warns_and_falls_back(fresh_warnings):
    """What happens to impl='triton' where triton is not importable (simulated here)."""
    v, logits, _ = make_inputs(4, 4, 2, 1)
    with temporary_outlook_impl('triton', None, unavailable='triton is not importable (sim)'):
        assert 'triton' in known_impls() and 'triton' not in available_impls()
        with pytest.warns(OutlookImplFallbackWarning,
                          match=r"'triton' .* triton is not importable \(sim\); running 'chunked'"):
            out = outlook_attention(v, logits, 1, 3, 1, 2, impl='triton')
        torch.testing.assert_close(out, outlook_attention_reference(v, logits, 1, 3, 1, 2))
        assert select_impl(v, 'auto', logits) == 'chunked'
    triton_entry = dispatcher.OUTLOOK_IMPLS.entry('triton')
    assert ('triton' in available_impls()) == (triton_entry.fn is not None)


def test_triton_on_plain_cpu_falls_back(fresh_warnings):
    pytest.importorskip('triton')
    from mmvolo.ops import outlook_triton
    if outlook_triton.INTERPRETED:
        pytest.skip('this process runs triton interpreted')
    v, logits, _ = make_inputs(4, 4, 2, 1)
    with pytest.warns(OutlookImplFallbackWarning, match="'triton' .*cpu tensors .*'chunked'"):
        out = outlook_attention(v, logits, 1, 3, 1, 2, impl='triton')
    torch.testing.assert_close(out, outlook_attention_reference(v, logits, 1, 3, 1, 2))


@pytest.mark.parametrize('impl', ['reference', 'chunked', 'auto'])
def test_dispatch_results_agree(impl):
    v, logits, _ = make_inputs(7, 5, 2, 2)
    out = outlook_attention(v, logits, 2, 3, 1, 2, impl=impl)
    torch.testing.assert_close(out, outlook_attention_reference(v, logits, 2, 3, 1, 2),
                               atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------
# torch.compile
# ------------------------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(torch, 'compile'), reason='torch.compile unavailable')
def test_compile_chunked_no_graph_break():
    """fullgraph=True: the chunked custom op must trace without a break (aot_eager keeps it
    fast: dynamo + AOT autograd are exercised, inductor code generation is not)."""
    import torch._dynamo

    def fn(v, logits):
        return outlook_attention(v * 2, logits, 2, 3, 1, 2, impl='chunked').sin()

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend='aot_eager', fullgraph=True)
    v, logits, grad = make_inputs(7, 5, 2, 2)
    want = value_and_grads(fn, v, logits, grad)
    got = value_and_grads(compiled, v, logits, grad)
    assert max(max_errors(got, want)) < 1e-5


@pytest.mark.skipif(not hasattr(torch, 'compile'), reason='torch.compile unavailable')
def test_compile_fallback_and_debug_log_without_graph_break(float32_only_impl, fresh_warnings,
                                                           caplog):
    """The dispatch decision, its warning and its debug log happen at trace time."""
    import torch._dynamo

    def fn(v, logits):
        return outlook_attention(v, logits, 2, 3, 1, 2, impl='wrapped').sin()

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend='aot_eager', fullgraph=True)
    v, logits, _ = make_inputs(7, 5, 2, 2, dtype=torch.float64)
    with caplog.at_level(logging.DEBUG, logger='mmvolo.ops'):
        with pytest.warns(OutlookImplFallbackWarning, match="running 'chunked'"):
            out = compiled(v, logits)
    torch._dynamo.reset()
    assert any("'auto' chose 'chunked'" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(out, outlook_attention_reference(v, logits, 2, 3, 1, 2).sin())


# ------------------------------------------------------------------------------------------
# define_outlook_op: any forward/backward pair becomes a differentiable custom op
# ------------------------------------------------------------------------------------------

BACKWARD_FLAGS = []


def _recording_backward(*args):
    """The chunked backward (a plain function), recording the (need_v, need_logits) flags."""
    BACKWARD_FLAGS.append(args[-2:])
    return chunked_backward(*args)


@pytest.fixture(scope='module')
def reference_op():
    """The reference forward paired with the chunked backward, as a new op."""
    return define_outlook_op('mmvolo_test::outlook_pair', outlook_attention_reference,
                             _recording_backward)


def test_define_outlook_op_is_differentiable(reference_op):
    v, logits, _ = make_inputs(3, 2, 2, 1, batch=1, dtype=torch.float64)
    v.requires_grad_()
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: reference_op(a, b, 1, 3, 1, 2), (v, logits))
    BACKWARD_FLAGS.clear()
    out = reference_op(v, logits.detach(), 1, 3, 1, 2)
    (grad_v,) = torch.autograd.grad(out.sum(), v)
    assert BACKWARD_FLAGS == [(True, False)]  # needs_input_grad reaches the backward
    torch.testing.assert_close(grad_v, torch.autograd.grad(
        outlook_attention_reference(v, logits, 1, 3, 1, 2).sum(), v)[0])


@pytest.mark.skipif(not hasattr(torch, 'compile'), reason='torch.compile unavailable')
def test_define_outlook_op_compiles_without_graph_break(reference_op):
    import torch._dynamo

    def fn(v, logits):
        return reference_op(v * 2, logits, 2, 3, 1, 2).sin()

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend='aot_eager', fullgraph=True)
    v, logits, grad = make_inputs(7, 5, 2, 2)
    assert max(max_errors(value_and_grads(compiled, v, logits, grad),
                          value_and_grads(fn, v, logits, grad))) < 1e-6


if __name__ == '__main__' and '--triton-worker' in sys.argv:
    _triton_worker()
