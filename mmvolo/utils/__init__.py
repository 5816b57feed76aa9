"""Utilities: configs (load, build their model, edit) and model complexity (params / FLOPs)."""
from .complexity import Complexity, config_complexity, measure_complexity
from .config import ConfigError, build_model_for_analysis, load_config_file, replace_norm_type

__all__ = ['Complexity', 'ConfigError', 'build_model_for_analysis', 'config_complexity',
           'load_config_file', 'measure_complexity', 'replace_norm_type']
