"""Deprecated module path: the token mixers live in :mod:`mmvolo.models.token_mixers`
(``from mmvolo.models import Involution, ...`` is the stable spelling). Removed in the
release after next."""
import warnings

from .token_mixers import DWConvMixer, Involution, LocalSelfAttention  # noqa: F401

warnings.warn('mmvolo.models.mixers is deprecated; import the mixers from mmvolo.models',
              DeprecationWarning, stacklevel=2)
