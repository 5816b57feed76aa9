"""Deprecated: :func:`forced_outlook_impl` is :func:`mmvolo.ops.forced_impl` restricted to
outlook attention (the dispatcher reads the forced impl; no module is touched). To be removed
in the release after next."""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from .dispatch import forced_impl
from .outlook import OUTLOOK_IMPLS


@contextlib.contextmanager
def forced_outlook_impl(model: Any, name: str) -> Iterator[None]:
    """Run outlook attention with impl ``name`` inside the block (``model`` is ignored)."""
    warnings.warn('mmvolo.ops.impl_override.forced_outlook_impl(model, name) is deprecated; '
                  "use mmvolo.ops.forced_impl(name, ops=('outlook attention',))",
                  DeprecationWarning, stacklevel=3)
    with forced_impl(name, ops=(OUTLOOK_IMPLS.op,)):
        yield
