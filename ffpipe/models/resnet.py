"""ResNet18 (torchvision's definition) and a small residual CNN, cut into units.

`block` granularity: the stem and every BasicBlock are units (ResNet18: 1 + 8 = 9).
`layer` granularity: the stem, then each BasicBlock splits into conv1+bn1+relu (pushes the
block's input as a skip) and conv2+bn2 (+ shortcut of the popped skip) + relu (ResNet18: 17).
"""
from __future__ import annotations

from torch import nn
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models.resnet import BasicBlock

from ffpipe.models.units import SkipUnit, adapt_stem

SMALL_IMAGE_MAX = 64  # inputs up to this many pixels a side get the CIFAR stem


def cut_basic_block(block: BasicBlock, granularity: str) -> list[nn.Module]:
    if granularity == "block":
        return [SkipUnit(block)]
    first = SkipUnit(nn.Sequential(block.conv1, block.bn1, nn.ReLU(inplace=True)), push_skip=True)
    second = SkipUnit(nn.Sequential(block.conv2, block.bn2), pop_skip=True,
                      shortcut=block.downsample, post=nn.ReLU(inplace=True))
    return [first, second]


def resnet18_units(in_shape: tuple[int, int, int], granularity: str) -> list[nn.Module]:
    channels, height, _ = in_shape
    net = tv_resnet18()
    if height <= SMALL_IMAGE_MAX:
        # CIFAR stem: 3x3 stride-1 conv, no max-pool, so 32 px keeps 32x32 maps in layer1.
        stem = nn.Sequential(adapt_stem(net.conv1, channels, 3, 1), net.bn1, net.relu)
    else:
        stem = nn.Sequential(adapt_stem(net.conv1, channels), net.bn1, net.relu, net.maxpool)
    units = [SkipUnit(stem)]
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in layer:
            units += cut_basic_block(block, granularity)
    return units


def small_cnn_units(in_shape: tuple[int, int, int], granularity: str, width: int = 0) -> list[nn.Module]:
    """A stem and three BasicBlocks (w, 2w, 4w channels; strides 1, 2, 2): 4 or 7 units."""
    w = width or 16
    stem = nn.Sequential(nn.Conv2d(in_shape[0], w, 3, padding=1, bias=False),
                         nn.BatchNorm2d(w), nn.ReLU(inplace=True))
    units = [SkipUnit(stem)]
    for c_in, c_out, stride in ((w, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2)):
        down = None
        if stride != 1 or c_in != c_out:
            down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(c_out))
        units += cut_basic_block(BasicBlock(c_in, c_out, stride, down), granularity)
    return units
