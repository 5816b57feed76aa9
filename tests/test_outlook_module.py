"""OutlookAttention / Outlooker modules against a literal implementation of the paper."""
import math

import pytest
import torch
import torch.nn.functional as F
from literal_outlook import literal_outlook_attention

from mmvolo import OutlookAttention, Outlooker


def literal_module_forward(module: OutlookAttention, x: torch.Tensor) -> torch.Tensor:
    """The module's computation with the attention part done by explicit loops."""
    stride = module.stride
    pooled = x
    if stride > 1:
        pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), stride, stride, ceil_mode=True)
        pooled = pooled.permute(0, 2, 3, 1)
    logits = module.attn(pooled) * (module.embed_dims // module.num_heads) ** -0.5
    mixed = literal_outlook_attention(module.v(x), logits, module.num_heads,
                                      module.kernel_size, module.padding, stride)
    return module.proj(mixed)


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('size', [(5, 7), (6, 6), (3, 1)])
@pytest.mark.parametrize('impl', ['reference', 'auto'])
def test_outlook_attention_matches_literal_formula(stride, size, impl):
    module = OutlookAttention(6, num_heads=2, stride=stride, impl=impl).double()
    x = torch.randn(2, *size, 6, dtype=torch.float64, requires_grad=True)
    out = module(x)
    expected = literal_module_forward(module, x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)

    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *module.parameters()], grad_out)
    grads_expected = torch.autograd.grad(expected, [x, *module.parameters()], grad_out)
    for got, want in zip(grads, grads_expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_outlook_attention_nchw_mode_equals_channels_last():
    module = OutlookAttention(8, num_heads=2, stride=2)
    nchw = OutlookAttention(8, num_heads=2, stride=2, channels_last=False)
    nchw.load_state_dict(module.state_dict())
    x = torch.randn(1, 9, 11, 8)
    out = nchw(x.permute(0, 3, 1, 2))
    assert out.shape == (1, 8, 9, 11)
    torch.testing.assert_close(out.permute(0, 2, 3, 1), module(x))


def test_outlook_attention_grid_size_at_odd_sizes():
    module = OutlookAttention(4, num_heads=1, stride=2)
    x = torch.randn(1, 7, 5, 4)
    assert module.attention_logits(x).shape == (1, math.ceil(7 / 2), math.ceil(5 / 2), 81)


def test_outlook_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match='must divide'):
        OutlookAttention(10, num_heads=3)


def test_outlooker_block_is_residual_and_trains():
    block = Outlooker(8, num_heads=2, stride=2)
    x = torch.randn(2, 6, 10, 8, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert all(param.grad is not None and param.grad.abs().sum() > 0
               for param in block.parameters())


def test_modules_registered_for_mmseg_and_mmpretrain():
    from mmpretrain.registry import MODELS as CLS_MODELS
    from mmseg.registry import MODELS as SEG_MODELS

    for registry in (SEG_MODELS, CLS_MODELS):
        assert registry.get('OutlookAttention') is OutlookAttention
        assert registry.get('Outlooker') is Outlooker
        built = registry.build(dict(type='Outlooker', embed_dims=8, num_heads=2))
        assert isinstance(built, Outlooker)
