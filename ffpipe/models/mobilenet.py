"""MobileNetV3-Small and -Large from torchvision's definitions, cut into units.

`block` granularity: the stem, every inverted-residual block and the last 1x1 conv are units
(Small: 13, Large: 17). `layer` granularity: every Conv2dNormActivation is a unit; a
squeeze-excitation (no norm, no activation of its own) stays with the depthwise conv it rescales;
in a block with a residual connection the first unit pushes the block's input and the projection
unit pops and adds it. The classifier is dropped: goodness heads replace it.
"""
from __future__ import annotations

from torch import nn
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small
from torchvision.ops.misc import SqueezeExcitation

from ffpipe.models.resnet import SMALL_IMAGE_MAX
from ffpipe.models.units import SkipUnit, adapt_stem


def _cut_inverted_residual(block: nn.Module, granularity: str) -> list[nn.Module]:
    if granularity == "block":
        return [SkipUnit(block)]
    groups: list[list[nn.Module]] = []
    for layer in block.block:
        if isinstance(layer, SqueezeExcitation):
            groups[-1].append(layer)
        else:
            groups.append([layer])
    residual = block.use_res_connect
    units = [SkipUnit(nn.Sequential(*g)) for g in groups]
    units[0].push_skip = residual
    units[-1].pop_skip = residual
    return units


def mobilenet_v3_units(in_shape: tuple[int, int, int], granularity: str, size: str) -> list[nn.Module]:
    channels, height, _ = in_shape
    net = (mobilenet_v3_small if size == "small" else mobilenet_v3_large)()
    stem = net.features[0]
    # Small images keep their resolution through the stem (stride 1), as ResNet's CIFAR stem does.
    stride = 1 if height <= SMALL_IMAGE_MAX else None
    stem[0] = adapt_stem(stem[0], channels, stride=stride)
    units = [SkipUnit(stem)]
    for block in net.features[1:-1]:
        units += _cut_inverted_residual(block, granularity)
    units.append(SkipUnit(net.features[-1]))
    return units
