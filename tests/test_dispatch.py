"""The one dispatcher (``mmvolo.ops.dispatch``) as every op sees it: the same precedence
(forced > ``impl=`` > ``MMVOLO_<OP>_IMPL`` > 'auto'), the same one-line errors and the same
fallback warning, for outlook attention and the window ops alike."""
from __future__ import annotations

import warnings

import pytest
import torch
from compile_checks import assert_compiles_like_eager

from mmvolo.ops import REGISTRIES, ImplFallbackWarning, forced_impl
from mmvolo.ops.dispatch import ImplRegistry, env_var_for
from mmvolo.ops.dwconv import DEPTHWISE_CONV_IMPLS
from mmvolo.ops.involution import INVOLUTION_IMPLS, involution, involution_reference
from mmvolo.ops.local_attention import LOCAL_ATTENTION_IMPLS
from mmvolo.ops.outlook import OUTLOOK_IMPLS

WINDOW_OPS = [INVOLUTION_IMPLS, LOCAL_ATTENTION_IMPLS, DEPTHWISE_CONV_IMPLS]


def test_every_op_is_registered_once_with_a_reference():
    for registry in [OUTLOOK_IMPLS, *WINDOW_OPS]:
        assert REGISTRIES[registry.op] is registry
        assert 'reference' in registry.available()
    assert OUTLOOK_IMPLS.env_var == 'MMVOLO_OUTLOOK_IMPL'  # the existing name is kept
    assert INVOLUTION_IMPLS.env_var == env_var_for('involution') == 'MMVOLO_INVOLUTION_IMPL'


@pytest.mark.parametrize('registry', WINDOW_OPS, ids=lambda r: r.op)
def test_window_op_precedence(registry, monkeypatch):
    x = torch.randn(1, 3, 3, 4)
    monkeypatch.delenv(registry.env_var, raising=False)
    assert registry.select(x, impl=None) == 'fast'  # auto: highest priority
    monkeypatch.setenv(registry.env_var, 'reference')
    assert registry.select(x, impl=None) == 'reference'  # env var
    assert registry.select(x, impl='fast') == 'fast'  # argument beats env var
    with forced_impl('reference', ops=(registry.op,)):
        assert registry.select(x, impl='fast') == 'reference'  # forced beats argument
    assert registry.select(x, impl='fast') == 'fast'  # restored


def test_unknown_names_are_one_line_errors(monkeypatch):
    x = torch.randn(1, 3, 3, 4)
    with pytest.raises(ValueError, match=r"^involution: unknown impl 'triton' \(impl=\); "
                                         'choose one of auto, fast, reference$'):
        INVOLUTION_IMPLS.select(x, impl='triton')
    monkeypatch.setenv(INVOLUTION_IMPLS.env_var, 'cuda')
    with pytest.raises(ValueError, match=r"unknown impl 'cuda' \(MMVOLO_INVOLUTION_IMPL\)"):
        INVOLUTION_IMPLS.select(x)
    with pytest.raises(ValueError, match="forced_impl: unknown op 'conv'"):
        with forced_impl('reference', ops=('conv',)):
            pass


def test_fallback_warns_once_per_reason_and_runs_auto():
    registry = ImplRegistry('test op')
    try:
        registry.register('reference')(lambda x: x + 1)
        registry.register('fp32', supports=lambda x: None if x.dtype == torch.float32
                          else 'float32 only', priority=5)(lambda x: x + 2)
        x64 = torch.zeros(2, dtype=torch.float64)
        with pytest.warns(ImplFallbackWarning, match=r"test op impl 'fp32' \(from impl=\) "
                          r"cannot run here: float32 only; running 'reference'"):
            assert registry.select(x64, impl='fp32') == 'reference'
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # the same reason does not warn twice
            assert registry.select(x64, impl='fp32') == 'reference'
        assert registry.select(x64.float()) == 'fp32'
    finally:
        REGISTRIES.pop('test op')


def test_a_fourth_window_impl_is_one_registration():
    x = torch.randn(1, 5, 6, 4, dtype=torch.float64)
    kernel = torch.randn(1, 5, 6, 2 * 9, dtype=torch.float64)
    calls = []

    def spy(*args):
        calls.append(args[0].shape)
        return involution_reference(*args)

    with INVOLUTION_IMPLS.temporary('spy', spy, priority=100):
        out = involution(x, kernel, 3, 2)
    assert calls == [x.shape]
    assert torch.allclose(out, involution(x, kernel, 3, 2, impl='reference'))
    assert 'spy' not in INVOLUTION_IMPLS.known()


def test_ops_do_not_import_models():
    """ops sit below models (docs/architecture.md): no module of mmvolo.ops imports them."""
    import ast
    from pathlib import Path

    import mmvolo.ops

    for path in Path(mmvolo.ops.__file__).parent.glob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = ('.' * node.level) + (node.module or '')
                assert 'models' not in target.split('.'), f'{path.name} imports {target}'


@pytest.mark.slow(seconds=3)
@pytest.mark.parametrize('mixer', [None, 'Involution', 'LocalSelfAttention', 'DWConvMixer'])
def test_volo_with_each_mixer_compiles_without_graph_break(mixer, tiny_arch):
    """Every fast path is a custom op from the one wrapper: dynamo keeps the whole VOLO
    forward in one graph, and the compiled forward and backward (AOT autograd through the
    fake kernels) equal eager."""
    from mmvolo import VOLO

    model = VOLO(arch=tiny_arch, token_mixer=mixer and dict(type=mixer)).double()
    assert_compiles_like_eager(model, torch.randn(1, 3, 40, 56, dtype=torch.float64))
