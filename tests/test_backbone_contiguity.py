"""VOLO's outputs are NCHW-contiguous (both modes, every arch's widths, odd input sizes).

VOLO computes on channels-last tokens, so without an explicit copy its maps are permuted and
cropped views; kernels that read memory as NCHW (compiled mmcv/mmdet ops) would misread them.
"""
from __future__ import annotations

import pytest
import torch

import mmvolo  # noqa: F401  (registers VOLO)
from mmvolo.models.arch_zoo import ARCH_ZOO
from mmvolo.models.volo import VOLO

#: Odd and even input sizes (H, W), including ones that need padding and cropping.
SIZES = ((32, 32), (33, 47), (50, 17))


def _shallow(arch: str) -> dict:
    """An official arch's widths and heads with one block per group (same output path)."""
    return dict(ARCH_ZOO[arch], layers=(1, 1, 1, 1))


def read_as_nchw(x: torch.Tensor) -> torch.Tensor:
    """What a kernel that assumes NCHW-contiguous memory reads from ``x`` (same shape)."""
    strides = torch.empty(x.shape).stride()
    return torch.as_strided(x, x.shape, strides, x.storage_offset())


def _outputs(model: VOLO, size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model(torch.randn(2, 3, *size))


@pytest.mark.parametrize('feature_pyramid', [True, False])
@pytest.mark.parametrize('arch', ['tiny', 'd1', 'd2', 'd3', 'd4', 'd5'])
def test_outputs_are_nchw_contiguous(arch: str, feature_pyramid: bool, tiny_arch: dict) -> None:
    settings = tiny_arch if arch == 'tiny' else _shallow(arch)
    model = VOLO(arch=settings, feature_pyramid=feature_pyramid).eval()
    for size in SIZES:
        for out in _outputs(model, size):
            assert out.is_contiguous(), (arch, feature_pyramid, size, out.stride())


@pytest.mark.parametrize('feature_pyramid', [True, False])
def test_nchw_memory_reader_matches_on_outputs(feature_pyramid: bool, tiny_arch: dict) -> None:
    """An op reading memory as NCHW gives the same result on VOLO outputs as on copies."""
    model = VOLO(arch=tiny_arch, feature_pyramid=feature_pyramid).eval()
    for size in SIZES:
        for out in _outputs(model, size):
            assert torch.equal(read_as_nchw(out), read_as_nchw(out.contiguous()))
            # flat NCHW indexing: view(-1) raises on any non-contiguous strides
            assert torch.equal(out.view(-1), out.contiguous().view(-1))


def test_nchw_memory_reader_misreads_permuted_views(tiny_arch: dict) -> None:
    """The regression the copy prevents: the pre-copy pyramid maps are permuted views."""
    model = VOLO(arch=tiny_arch).eval()
    with torch.no_grad():
        groups = model.forward_groups(torch.randn(2, 3, 48, 48))
        view = model._pyramid_level(2, groups, 48, 48)
    assert not view.is_contiguous()
    assert not torch.equal(read_as_nchw(view), view)
    with pytest.raises(RuntimeError):
        view.view(-1)


def test_training_gradients_flow_through_the_copy(tiny_arch: dict) -> None:
    model = VOLO(arch=tiny_arch).train()
    outs = model(torch.randn(1, 3, 33, 47))
    sum(out.sum() for out in outs).backward()
    assert model.patch_embed.proj.weight.grad is not None
