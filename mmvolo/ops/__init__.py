"""Operators, each one function with selectable implementations behind one dispatcher.

:mod:`.dispatch` is the rule for every op (a registry per op: name, ``supports``, priority;
``impl=``, ``MMVOLO_<OP>_IMPL`` and :func:`forced_impl` to choose). Importing this package
registers the implementations, each from its own module: outlook attention's 'reference'
(:mod:`.outlook_reference`), 'chunked' (:mod:`.outlook_chunked`) and 'triton'
(:mod:`.outlook_triton`; registered as known but unavailable when triton cannot be imported -
a failing triton never breaks ``import mmvolo``); the window ops' 'reference' and 'fast' in
their own modules. A further implementation is one module registering itself, imported here.
"""
from . import (  # noqa: F401  (register themselves)
    local_aggregate_triton,  # noqa: F401  (registers local_aggregate's 'triton', maybe as unavailable)
    outlook_chunked,
    outlook_reference,
    outlook_triton,  # noqa: F401  (registers 'triton', maybe as unavailable)
)
from .deform_aggregate import deform_aggregate
from .dispatch import REGISTRIES, ImplFallbackWarning, ImplRegistry, forced_impl
from .dwconv import depthwise_conv
from .involution import involution
from .local_aggregate import local_aggregate, local_similarity
from .local_attention import local_attention
from .outlook import (
    IMPL_ENV_VAR,
    OUTLOOK_IMPLS,
    OutlookImplFallbackWarning,
    available_impls,
    known_impls,
    outlook_attention,
    register_outlook_impl,
    register_unavailable_impl,
    temporary_outlook_impl,
    unregister_outlook_impl,
    unsupported_reason,
)
from .outlook_reference import outlook_attention_reference

__all__ = ['IMPL_ENV_VAR', 'OUTLOOK_IMPLS', 'OutlookImplFallbackWarning', 'available_impls',
           'known_impls',
           'outlook_attention', 'outlook_attention_reference', 'register_outlook_impl',
           'register_unavailable_impl', 'temporary_outlook_impl', 'unregister_outlook_impl',
           'unsupported_reason',
           # the dispatcher of every op (.dispatch)
           'REGISTRIES', 'ImplFallbackWarning', 'ImplRegistry', 'forced_impl',
           # the mixers' ops, configurations of local_aggregate: impl='auto'|'reference'|'fast'
           'depthwise_conv', 'involution', 'local_attention',
           # one local-aggregation op for the family, impl='auto'|'reference'|'fast'|'triton'
           'local_aggregate', 'local_similarity', 'deform_aggregate']
