"""Operators: outlook attention behind one function with selectable implementations.

Importing this package registers the 'reference' and 'chunked' implementations, and
'triton' when triton is importable (a failing triton import never breaks ``import mmvolo``).
"""
from . import outlook_chunked  # noqa: F401  (registers 'chunked')
from .outlook_attention import (
    IMPL_ENV_VAR,
    available_impls,
    outlook_attention,
    outlook_attention_reference,
    register_outlook_impl,
)

try:
    from . import outlook_triton  # noqa: F401  (registers 'triton')
except Exception:  # pragma: no cover - depends on the installed triton
    outlook_triton = None

__all__ = ['IMPL_ENV_VAR', 'available_impls', 'outlook_attention',
           'outlook_attention_reference', 'register_outlook_impl']
