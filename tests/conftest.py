"""Shared fixtures: tiny VOLO settings and a deterministic seed for every test."""
import os
import shutil

import pytest
import torch

import mmvolo.runtime  # noqa: F401  (tests build mmseg models, as the tools do: stack fixes)
from mmvolo.models.arch_zoo import TINY_ARCH as ARCH_TINY

os.environ.setdefault('MMVOLO_OUTLOOK_IMPL', 'auto')

#: A VOLO small enough for fast CPU tests (same structure as D1): the package's own.
TINY_ARCH = dict(ARCH_TINY)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_arch():
    return dict(TINY_ARCH)


@pytest.fixture(scope='session', autouse=True)
def _passing_run_keeps_no_temp_files(request, tmp_path_factory):
    """A passing run leaves nothing in pytest's temp folder.

    ``tmp_path_retention_policy = "failed"`` (pyproject.toml) drops passing tests' ``tmp_path``
    but keeps the module fixtures' ``tmp_path_factory.mktemp`` folders (D1 checkpoints:
    ~300 MB a run); they go here when no test failed.
    """
    yield
    if request.session.testsfailed == 0:
        shutil.rmtree(tmp_path_factory.getbasetemp(), ignore_errors=True)


def pytest_collection_modifyitems(session, config, items):
    """Costliest files first: by the ``seconds`` their ``slow`` tests declare, summed (about
    that long each on a 2-core machine), each file's tests in their own order.

    pytest-xdist (``--dist loadfile --no-loadscope-reorder``, as tools/run_tests.sh runs it)
    hands files to workers in collection order; collected alphabetically (or, without that
    flag, by test count), the costliest ones (toy learning, resume, mmseg's tools) came last
    and ran alone on one core at the end. Started first, the short files fill in around them.
    """
    cost: dict = {}
    for item in items:
        marker = item.get_closest_marker('slow')
        if marker is not None:
            cost[item.path] = cost.get(item.path, 0) + marker.kwargs.get('seconds', 1)
    items.sort(key=lambda item: -cost.get(item.path, 0))  # stable: order kept within a file
