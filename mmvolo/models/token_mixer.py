"""Deprecated module path: building token mixers lives in :mod:`mmvolo.models.mixer_builder`.
Removed in the release after next."""
import warnings

from .mixer_builder import (  # noqa: F401
    DEFAULT_TOKEN_MIXER,
    build_token_mixer,
    mixer_type,
    registered_mixers,
)

warnings.warn('mmvolo.models.token_mixer is deprecated; use mmvolo.models.mixer_builder',
              DeprecationWarning, stacklevel=2)
