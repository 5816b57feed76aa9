"""Utilities: configs (load, build their model, edit), model complexity (params / FLOPs) and a
free port for launchers."""
from .complexity import Complexity, config_complexity, measure_complexity
from .config import ConfigError, build_model_for_analysis, load_config_file, replace_norm_type
from .ports import free_port

__all__ = ['Complexity', 'ConfigError', 'build_model_for_analysis', 'config_complexity',
           'free_port', 'load_config_file', 'measure_complexity', 'replace_norm_type']
