"""Architectures cut into units; no training, device or transport code lives here."""
from __future__ import annotations

from torch import nn

from ffpipe.config import ModelConfig
from ffpipe.errors import ConfigError
from ffpipe.models.mlp import mlp_units
from ffpipe.models.mobilenet import mobilenet_v3_units
from ffpipe.models.plugin import plugin_units
from ffpipe.models.resnet import RESNETS, resnet_units, small_cnn_units
from ffpipe.models.units import SkipUnit, UnitShape, by_resolution, dry_run, with_dropout
from ffpipe.plugins import is_plugin

def build_units(cfg: ModelConfig, in_shape: tuple[int, ...], seed: int = 0) -> list[nn.Module]:
    """The model named by `cfg` for inputs of `in_shape` (C, H, W), as an ordered list of units
    (`seed`: of their dropout masks, where model.dropout is on)."""
    cfg.validate()  # the granularity is one the model has (config_sections.MODEL_GRANULARITIES)
    if is_plugin(cfg.name):
        return with_dropout(plugin_units(cfg, in_shape), cfg.dropout, seed)
    if cfg.name == "mlp":
        return with_dropout(mlp_units(in_shape, cfg.width, cfg.depth), cfg.dropout, seed)
    if len(in_shape) != 3:
        raise ConfigError(f"model '{cfg.name}' needs images shaped [C, H, W], got {list(in_shape)}")
    cut = "block" if cfg.granularity == "stage" else cfg.granularity
    if cfg.name in RESNETS:
        units = resnet_units(cfg.name, in_shape, cut)
    elif cfg.name == "small_cnn":
        units = small_cnn_units(in_shape, cut, cfg.width)
    else:
        units = mobilenet_v3_units(in_shape, cut, cfg.name.rsplit("_", 1)[1])
    if cfg.granularity == "stage":
        units = by_resolution(units, in_shape)
    return with_dropout(units, cfg.dropout, seed)


__all__ = ["SkipUnit", "UnitShape", "build_units", "dry_run"]
