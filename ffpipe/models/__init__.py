"""Architectures cut into units; no training, device or transport code lives here."""
from __future__ import annotations

from torch import nn

from ffpipe.config import ModelConfig
from ffpipe.errors import ConfigError
from ffpipe.models.mlp import mlp_units
from ffpipe.models.mobilenet import mobilenet_v3_units
from ffpipe.models.resnet import RESNETS, resnet_units, small_cnn_units
from ffpipe.models.units import SkipUnit, UnitShape, dry_run

GRANULARITIES = {
    **{name: ("layer", "block") for name in RESNETS},
    "mobilenet_v3_small": ("layer", "block"),
    "mobilenet_v3_large": ("layer", "block"),
    "small_cnn": ("layer", "block"),
    "mlp": ("layer",),
}


def build_units(cfg: ModelConfig, in_shape: tuple[int, ...]) -> list[nn.Module]:
    """The model named by `cfg` for inputs of `in_shape` (C, H, W), as an ordered list of units."""
    allowed = GRANULARITIES[cfg.name]
    if cfg.granularity not in allowed:
        raise ConfigError(f"model '{cfg.name}' has no '{cfg.granularity}' granularity; "
                          f"set model.granularity to one of: {', '.join(allowed)}")
    if cfg.name == "mlp":
        return mlp_units(in_shape, cfg.width, cfg.depth)
    if len(in_shape) != 3:
        raise ConfigError(f"model '{cfg.name}' needs images shaped [C, H, W], got {list(in_shape)}")
    if cfg.name in RESNETS:
        return resnet_units(cfg.name, in_shape, cfg.granularity)
    if cfg.name == "small_cnn":
        return small_cnn_units(in_shape, cfg.granularity, cfg.width)
    return mobilenet_v3_units(in_shape, cfg.granularity, cfg.name.rsplit("_", 1)[1])


__all__ = ["GRANULARITIES", "SkipUnit", "UnitShape", "build_units", "dry_run"]
