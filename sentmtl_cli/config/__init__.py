"""Typed configs: the model (backbone + heads), training recipes, and data sources."""

from .data import DataConfig
from .files import read_yaml, resolve_path, validate
from .model import BackboneConfig, HeadConfig, ModelConfig, default_config_path, load_config, shipped_config
from .train import TrainConfig, TrainTaskConfig, load_train_config

__all__ = [
    "BackboneConfig",
    "DataConfig",
    "HeadConfig",
    "ModelConfig",
    "TrainConfig",
    "TrainTaskConfig",
    "default_config_path",
    "load_config",
    "load_train_config",
    "read_yaml",
    "resolve_path",
    "shipped_config",
    "validate",
]
