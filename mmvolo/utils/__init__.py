"""Utilities: model complexity (params / FLOPs) from a config."""
from .complexity import (
    Complexity,
    build_model_for_analysis,
    config_complexity,
    measure_complexity,
)

__all__ = ['Complexity', 'build_model_for_analysis', 'config_complexity', 'measure_complexity']
