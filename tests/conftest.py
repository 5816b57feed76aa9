"""Shared fixtures: tiny VOLO settings and a deterministic seed for every test."""
import os

import pytest
import torch

import mmvolo.runtime  # noqa: F401  (tests build mmseg models, as the tools do: stack fixes)

os.environ.setdefault('MMVOLO_OUTLOOK_IMPL', 'auto')

#: A VOLO small enough for fast CPU tests (same structure as D1).
TINY_ARCH = dict(layers=(1, 1, 1, 1), embed_dims=(16, 32, 32, 32), num_heads=(2, 2, 2, 2),
                 stem_hidden_dims=8)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_arch():
    return dict(TINY_ARCH)
