"""local_aggregate's fused Triton impl ('triton') against impl='reference', every configuration.

The kernels run under Triton's interpreter (``TRITON_INTERPRET=1`` must be set before triton
is first imported), so every case runs in one subprocess (this file with
``--triton-worker``) and the parametrized tests read its results. Each case: the output and
every gradient (value, weight, offset) for a random upstream gradient, in float64 (the
kernels then accumulate in float64: equal to rounding, tolerance 1e-12) and in float32
(against the reference on float64 copies of the same values; error = max|x - ref| /
max(1, max|ref|), tolerance 1e-5), plus bf16 / fp16 on one case (tolerance 2 * eps(dtype) *
the reduction length). Shapes are tiny and odd: pixel counts not multiples of the kernel's
32-pixel interpreted tile (masked edge tiles), stride 2 with the ceil grid, dilation 2,
group counts that are not powers of two (G = 3, 5), group widths 1-3, offset groups
independent of G, offsets pushed up to +-(H+2) outside the image; ``torch.library.opcheck``
of the custom op.

Outside the interpreter (this process: no CUDA), an explicit impl='triton' falls back with
one ImplFallbackWarning and 'auto' keeps the CPU fast path; and the kernels of four
configurations compile ahead of time for sm_90 (no GPU needed: Triton's own ptxas) without
register spills.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import torch

from mmvolo.ops import ImplFallbackWarning, local_aggregate
from mmvolo.ops.local_aggregate import LOCAL_AGGREGATE_IMPLS, make_geometry

REPO_ROOT = Path(__file__).resolve().parents[1]
TOL = {'float64': 1e-12, 'float32': 1e-5}
#: name -> local_aggregate arguments (and the sizes: B, H, W, C, G, Go; scale of offsets)
CASES = {
    'involution': dict(size=(2, 7, 9, 6), groups=3, kernel_size=3, padding=1),
    'dynamic_softmax': dict(size=(1, 9, 7, 6), groups=3, kernel_size=3, padding=1,
                            normalize='softmax'),
    'depthwise_static': dict(size=(1, 7, 9, 5), groups=5, kernel_size=3, padding=1,
                             static=True),
    'static_softmax': dict(size=(1, 6, 7, 6), groups=2, kernel_size=3, padding=1,
                           static=True, normalize='softmax'),
    'stride2_dilation2': dict(size=(1, 9, 11, 6), groups=3, kernel_size=3, stride=2,
                              padding=2, dilation=2),
    'clamp_softmax': dict(size=(1, 8, 7, 6), groups=3, kernel_size=3, boundary='clamp',
                          normalize='softmax'),
    'clamp_dilation2': dict(size=(1, 8, 9, 6), groups=3, kernel_size=3, dilation=2,
                            boundary='clamp'),
    'outlook_fold_stride2': dict(size=(1, 7, 5, 6), groups=3, kernel_size=3, stride=2,
                                 padding=1, fold=True, normalize='softmax'),
    'fold_static_dilation2': dict(size=(1, 6, 5, 4), groups=2, kernel_size=3, padding=2,
                                  dilation=2, fold=True, static=True),
    'deform_softmax': dict(size=(1, 7, 6, 6), groups=3, off_groups=2, kernel_size=3,
                           padding=1, normalize='softmax'),
    'deform_far_outside': dict(size=(1, 6, 5, 6), groups=2, off_groups=3, kernel_size=3,
                               padding=1, offset_scale='far'),
    'deform_static_stride2': dict(size=(1, 7, 9, 5), groups=5, off_groups=1, kernel_size=3,
                                  stride=2, padding=1, static=True),
    'deform_fold_softmax': dict(size=(1, 7, 5, 6), groups=3, off_groups=3, kernel_size=3,
                                stride=2, padding=1, fold=True, normalize='softmax'),
    'deform_fold_static': dict(size=(1, 5, 6, 4), groups=2, off_groups=1, kernel_size=3,
                               padding=1, fold=True, static=True),
}
LOW_PRECISION_CASE = 'dynamic_softmax'
#: cases run again (fp64) with one input requiring grad at a time
NEEDS_CASES = ('static_softmax', 'clamp_softmax', 'outlook_fold_stride2', 'deform_softmax',
               'deform_fold_softmax')


def make_case(case: dict, dtype: torch.dtype) -> tuple:
    """(value, weight, offset | None, grad_out, kwargs) of a case, drawn with a fixed seed."""
    batch, height, width, channels = case['size']
    gen = torch.Generator().manual_seed(sum(case['size']) * 7 + case['groups'])
    keys = ('kernel_size', 'stride', 'padding', 'dilation', 'groups', 'normalize', 'fold',
            'boundary')
    kwargs = {key: case[key] for key in keys if key in case}
    k = kwargs['kernel_size']
    value = torch.randn(batch, height, width, channels, generator=gen, dtype=torch.float64)
    geom = make_geometry('test', value, k, kwargs.get('stride', 1), kwargs.get('padding', 0),
                         kwargs.get('dilation', 1), kwargs.get('boundary', 'zeros'))
    tail = (case['groups'], k * k) + ((k * k,) if case.get('fold') else ())
    lead = () if case.get('static') else (batch, geom.out_h, geom.out_w)
    weight = torch.randn(*lead, *tail, generator=gen, dtype=torch.float64)
    offset = None
    if case.get('off_groups'):
        shape = (batch, geom.out_h, geom.out_w, case['off_groups'], k * k, 2)
        if case.get('offset_scale') == 'far':  # up to +-(H + 2): many samples fully outside
            offset = (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) \
                * (height + 2)
        else:
            offset = torch.randn(*shape, generator=gen, dtype=torch.float64) * 1.5
    out_hw = (height, width) if case.get('fold') else (geom.out_h, geom.out_w)
    grad = torch.randn(batch, *out_hw, channels, generator=gen, dtype=torch.float64)
    cast = [None if t is None else t.to(dtype) for t in (value, weight, offset, grad)]
    return (*cast, kwargs)


def value_and_grads(impl: str, value, weight, offset, grad, kwargs,
                    needs: tuple[bool, bool, bool] = (True, True, True)) -> list[torch.Tensor]:
    """[out, grad value, grad weight(, grad offset)] of ``impl``; with ``needs`` only the
    gradients asked for (the others are not computed)."""
    leaves = [t.detach().clone().requires_grad_(need) for t, need in zip((value, weight), needs)]
    off = None if offset is None else offset.detach().clone().requires_grad_(needs[2])
    out = local_aggregate(*leaves, offset=off, impl=impl, **kwargs)
    out.backward(grad)
    grads = [t.grad for t, need in zip((*leaves, off), needs) if need and t is not None]
    return [out.detach(), *grads]


def rel_errors(got: list[torch.Tensor], want: list[torch.Tensor]) -> list[float]:
    """max|got - want| / max(1, max|want|) per tensor (inf where got is not finite)."""
    errors = []
    for g, w in zip(got, want):
        g, w = g.double(), w.double()
        finite = bool(torch.isfinite(g).all())
        errors.append((g - w).abs().max().item() / max(1.0, w.abs().max().item())
                      if finite else float('inf'))
    return errors


def _triton_worker() -> None:
    """Every case through impl='triton' vs the reference; print errors (relative, and the
    max abs differences for the record) and times as JSON."""
    from mmvolo.ops.local_aggregate_triton import INTERPRETED
    results: dict = {'interpreted': INTERPRETED, 'cases': {}, 'abs': {}, 'needs': {},
                     'seconds': {}}
    for name, case in CASES.items():
        started = time.perf_counter()
        for dtype in (torch.float64, torch.float32):
            value, weight, offset, grad, kwargs = make_case(case, dtype)
            want = value_and_grads('reference', *(None if t is None else t.double()
                                                  for t in (value, weight, offset, grad)),
                                   kwargs)
            got = value_and_grads('triton', value, weight, offset, grad, kwargs)
            dtypes_ok = all(t.dtype == dtype for t in got)
            results['cases'][f'{name}/{str(dtype)[6:]}'] = rel_errors(got, want) + [dtypes_ok]
            results['abs'][f'{name}/{str(dtype)[6:]}'] = [
                (g.double() - w).abs().max().item() for g, w in zip(got, want)]
        results['seconds'][name] = time.perf_counter() - started
    for dtype in (torch.bfloat16, torch.float16):
        value, weight, offset, grad, kwargs = make_case(CASES[LOW_PRECISION_CASE], dtype)
        want = value_and_grads('reference', value.double(), weight.double(), None,
                               grad.double(), kwargs)
        got = value_and_grads('triton', value, weight, None, grad, kwargs)
        results['cases'][str(dtype)[6:]] = rel_errors(got, want) + [
            all(t.dtype == dtype for t in got)]
    for name in NEEDS_CASES:  # one gradient at a time: the kernels skip the others
        value, weight, offset, grad, kwargs = make_case(CASES[name], torch.float64)
        for needs in ((True, False, False), (False, True, False), (False, False, True)):
            if offset is None and needs[2]:
                continue
            want = value_and_grads('reference', value, weight, offset, grad, kwargs, needs)
            got = value_and_grads('triton', value, weight, offset, grad, kwargs, needs)
            results['needs'][f'{name}/{needs.index(True)}'] = rel_errors(got, want)
    results['opcheck'] = _opcheck()
    value, weight = make_case(CASES['involution'], torch.float32)[:2]
    results['auto'] = LOCAL_AGGREGATE_IMPLS.select(value, weight)
    results['explicit'] = LOCAL_AGGREGATE_IMPLS.select(value, weight, impl='triton')
    print('RESULTS ' + json.dumps(results))


def _opcheck() -> str:
    """torch.library.opcheck of the forward op (schema, fake kernel, autograd, AOT dispatch)
    on a tiny deformable fold with softmax: 'ok' or the error's first line."""
    from mmvolo.ops.local_aggregate_triton import triton_forward  # noqa: F401  (registers)
    gen = torch.Generator().manual_seed(3)
    value = torch.randn(1, 5, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(1, 3, 2, 2, 9, 9, generator=gen, dtype=torch.float64,
                         requires_grad=True)
    offset = torch.randn(1, 3, 2, 2, 9, 2, generator=gen, dtype=torch.float64,
                         requires_grad=True)
    # K, S, P, D, clamp, Ho, Wo, G, Go, softmax, fold, static
    params = (3, 2, 1, 1, 0, 3, 2, 2, 2, 1, 1, 0)
    try:
        torch.library.opcheck(torch.ops.mmvolo.local_aggregate_triton_fwd.default,
                              (value, weight, offset, *params))
    except Exception as error:  # noqa: BLE001 - reported to the test
        return str(error).splitlines()[0]
    return 'ok'


@pytest.fixture(scope='module')
def triton_results() -> dict:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        pytest.skip(f'triton is not importable: {exc}')
    env = dict(os.environ, TRITON_INTERPRET='1', OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get('PYTHONPATH', '')]))
    env.pop(LOCAL_AGGREGATE_IMPLS.env_var, None)
    proc = subprocess.run([sys.executable, __file__, '--triton-worker'], env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULTS ')]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(lines[-1][len('RESULTS '):])


@pytest.mark.slow(seconds=2.5)  # x28: one interpreted subprocess (the fixture), ~75 s CPU in all
@pytest.mark.parametrize('dtype', ['float64', 'float32'])
@pytest.mark.parametrize('name', list(CASES))
def test_triton_matches_reference(triton_results, name, dtype):
    *errors, dtypes_ok = triton_results['cases'][f'{name}/{dtype}']
    assert dtypes_ok, 'a result dtype differs from its input'
    expected = 4 if CASES[name].get('off_groups') else 3  # out, grad value, weight(, offset)
    assert len(errors) == expected
    assert max(errors) < TOL[dtype], errors


@pytest.mark.parametrize('name', NEEDS_CASES)
def test_triton_one_gradient_at_a_time(triton_results, name):
    wanted = 3 if CASES[name].get('off_groups') else 2  # value, weight(, offset) alone
    runs = {key: errors for key, errors in triton_results['needs'].items()
            if key.startswith(name + '/')}
    assert len(runs) == wanted, runs
    for key, errors in runs.items():
        assert len(errors) == 2 and max(errors) < TOL['float64'], (key, errors)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_triton_low_precision(triton_results, dtype):
    *errors, dtypes_ok = triton_results['cases'][str(dtype)[6:]]
    assert dtypes_ok
    # 2 * eps * L, L = K*K terms per output (the value gradient sums K*K too; the weight
    # gradient a C/G = 2 dot product, then the softmax backward's K*K sum)
    assert max(errors) < 2 * torch.finfo(dtype).eps * 9, errors


def test_triton_custom_op_passes_opcheck(triton_results):
    assert triton_results['opcheck'] == 'ok'


def test_triton_is_opt_in_until_measured_on_a_gpu(triton_results):
    """It runs when named (here: interpreted); 'auto' keeps 'fast' (PRIORITY below it)."""
    assert triton_results['interpreted'] is True
    assert triton_results['explicit'] == 'triton' and triton_results['auto'] == 'fast'


def test_triton_falls_back_with_one_warning_without_cuda_or_interpreter(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip('CUDA is available: the triton impl runs here')
    monkeypatch.delenv(LOCAL_AGGREGATE_IMPLS.env_var, raising=False)
    monkeypatch.setattr(LOCAL_AGGREGATE_IMPLS, 'warned', set())
    value, weight, _, _, kwargs = make_case(CASES['involution'], torch.float32)
    want = local_aggregate(value, weight, impl='reference', **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        got = local_aggregate(value, weight, impl='triton', **kwargs)
        local_aggregate(value, weight, impl='triton', **kwargs)  # warned once per reason
    fallbacks = [w for w in caught if issubclass(w.category, ImplFallbackWarning)]
    assert len(fallbacks) == 1, [str(w.message) for w in caught]
    message = str(fallbacks[0].message)
    assert "impl 'triton'" in message and "running 'fast'" in message, message
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert LOCAL_AGGREGATE_IMPLS.select(value, weight) == 'fast'  # 'auto' passes it over


# ------------------------------------------------------------------------------------------
# Ahead-of-time compile for the GPU (no GPU needed): the kernels lower, and do not spill
# ------------------------------------------------------------------------------------------

#: (name, channels, groups, offset groups, K, S, P, clamp, softmax, static, fold)
AOT_CONFIGS = [
    ('outlook', 192, 6, 0, 3, 2, 1, 0, 1, 0, 1),
    ('DCNv3', 192, 6, 6, 3, 1, 1, 0, 1, 0, 0),
    ('neighborhood', 192, 6, 0, 7, 1, 0, 1, 1, 0, 0),
    ('depthwise', 192, 192, 0, 7, 1, 3, 0, 0, 1, 0),
]


def _sm90_usage(kernel, constexprs: dict) -> tuple[int, int]:
    """(registers, stack bytes) of ``kernel`` compiled for sm_90, fp32 pointers."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {name: 'constexpr' if name in constexprs else
                 '*fp32' if name.endswith('_ptr') else 'i32' for name in kernel.arg_names}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                              target=GPUTarget('cuda', 90, 32), options=dict(num_warps=4))
    tool = Path(triton.__file__).parent / 'backends' / 'nvidia' / 'bin' / 'cuobjdump'
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / 'kernel.cubin'
        cubin.write_bytes(compiled.asm['cubin'])
        usage = subprocess.run([str(tool), '-res-usage', str(cubin)], capture_output=True,
                               text=True, check=True).stdout
    fields = dict(re.findall(r'(REG|STACK):(\d+)', usage))
    return int(fields['REG']), int(fields['STACK'])


@pytest.mark.slow(seconds=2)  # a cold Triton cache; ~0.5 s when cached
@pytest.mark.parametrize('config', AOT_CONFIGS, ids=[c[0] for c in AOT_CONFIGS])
def test_kernels_compile_for_sm90_without_spills(config):
    pytest.importorskip('triton')
    from mmvolo.ops import local_aggregate_triton as lt
    if lt.INTERPRETED:
        pytest.skip('interpreted kernels are not compiled')
    _, channels, groups, off_groups, k, stride, padding, clamp, softmax, static, fold = config
    meta = lt._params(torch.empty(1, 1, 1, channels), k, stride, padding, 1, clamp, groups,
                      off_groups, softmax, static)
    kernels = [(lt._fwd_fold if fold else lt._fwd_rows, meta),
               (lt._bwd_rows, dict(meta, FOLD=bool(fold), NEED_W=True,
                                   NEED_OFF=off_groups > 0, NEED_V=off_groups > 0))]
    if not off_groups:
        skip = ('GO', 'CGO', 'HAS_OFF')
        kernels.append((lt._bwd_values, dict({key: val for key, val in meta.items()
                                              if key not in skip}, FOLD=bool(fold))))
    for kernel, constexprs in kernels:
        registers, stack = _sm90_usage(kernel, constexprs)
        assert registers <= 168 and stack == 0, (kernel.__name__, registers, stack)


if __name__ == '__main__' and '--triton-worker' in sys.argv:
    _triton_worker()
