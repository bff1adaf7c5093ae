"""A plain MLP for quick runs and classic Forward-Forward: every Linear+ReLU is a unit."""
from __future__ import annotations

import math

from torch import nn

from ffpipe.models.units import SkipUnit


def mlp_units(in_shape: tuple[int, ...], width: int = 0, depth: int = 0) -> list[nn.Module]:
    width, depth = width or 256, depth or 3
    sizes = [math.prod(in_shape)] + [width] * depth
    units = []
    for i, (d_in, d_out) in enumerate(zip(sizes, sizes[1:])):
        layers = [nn.Flatten()] if i == 0 else []
        units.append(SkipUnit(nn.Sequential(*layers, nn.Linear(d_in, d_out), nn.ReLU())))
    return units
