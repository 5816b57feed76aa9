"""Forcing one outlook-attention implementation on a model for a block of code.

The dispatcher (:mod:`.outlook_attention`) takes the impl from the call's ``impl=`` argument,
else $MMVOLO_OUTLOOK_IMPL, else ``'auto'``. Every :class:`~mmvolo.models.OutlookAttention`
passes its own ``impl`` attribute (a VOLO backbone's ``outlook_impl``), so the env var alone
does not reach a model configured with, say, ``outlook_impl='chunked'``.
:func:`forced_outlook_impl` sets both for the block - the ``impl`` of every OutlookAttention
module in the model and the env var (for functional calls) - and restores them afterwards.

Its use: ONNX export (:mod:`mmvolo.deploy.onnx_export`) forces ``'reference'``, whose
unfold -> matmul -> fold the exporter decomposes into standard ONNX ops, instead of the fast
impls, which are ``torch.library.custom_op`` nodes ONNX knows nothing about.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch.nn as nn

from .outlook_attention import IMPL_ENV_VAR, available_impls


@contextlib.contextmanager
def forced_outlook_impl(model: nn.Module, name: str) -> Iterator[int]:
    """Run outlook attention in ``model`` with impl ``name`` inside the block.

    Args:
        model: any module; its OutlookAttention submodules are switched.
        name: a registered impl that can run here (see :func:`mmvolo.ops.available_impls`).

    Yields:
        The number of OutlookAttention modules switched.

    Raises:
        ValueError: ``name`` is not an available impl (one line listing those that are).
    """
    if name not in available_impls():
        raise ValueError(f"outlook attention impl '{name}' is not available here; choose one "
                         f"of {', '.join(available_impls())}")
    from ..models.outlook_attention import OutlookAttention  # models import ops: import late

    modules = [module for module in model.modules() if isinstance(module, OutlookAttention)]
    saved = [(module, module.impl) for module in modules]
    saved_env = os.environ.get(IMPL_ENV_VAR)
    try:
        for module in modules:
            module.impl = name
        os.environ[IMPL_ENV_VAR] = name
        yield len(modules)
    finally:
        for module, impl in saved:
            module.impl = impl
        if saved_env is None:
            os.environ.pop(IMPL_ENV_VAR, None)
        else:
            os.environ[IMPL_ENV_VAR] = saved_env
