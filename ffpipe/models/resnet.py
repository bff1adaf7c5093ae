"""ResNets (torchvision's definitions) and a small residual CNN, cut into units.

`block` granularity: the stem and every residual block are units (ResNet18: 1 + 8 = 9, ResNet50:
1 + 16 = 17, ResNet152: 1 + 50 = 51).
`layer` granularity: the stem, then each block splits into its conv+norm(+relu) layers: the first
pushes the block's input as a skip, the last adds it back through the shortcut (BasicBlock: 2
units, Bottleneck: 3, the middle one passing the skip through).
Inputs up to 64 px a side get the CIFAR stem (3x3 stride-1 conv, no max-pool); larger ones
torchvision's ImageNet stem (7x7 stride-2 conv and a max-pool). Their ReLUs mask the incoming
gradient in place (kernels/relu.py: same values, one batch-sized tensor less at a block's end).
"""
from __future__ import annotations

from torch import nn
from torchvision import models as tv
from torchvision.models.resnet import BasicBlock, Bottleneck

from ffpipe.kernels.relu import lean_relus
from ffpipe.models.units import SkipUnit, adapt_stem

SMALL_IMAGE_MAX = 64  # inputs up to this many pixels a side get the CIFAR stem
RESNETS = {"resnet18": tv.resnet18, "resnet34": tv.resnet34, "resnet50": tv.resnet50,
           "resnet101": tv.resnet101, "resnet152": tv.resnet152, "wide_resnet50_2": tv.wide_resnet50_2}


def cut_block(block: BasicBlock | Bottleneck, granularity: str) -> list[nn.Module]:
    if granularity == "block":
        return [SkipUnit(block)]
    relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
    if isinstance(block, BasicBlock):
        layers = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
    else:
        layers = [(block.conv1, block.bn1), (block.conv2, block.bn2), (block.conv3, block.bn3)]
    units = [SkipUnit(nn.Sequential(layers[0][0], layers[0][1], relu()), push_skip=True)]
    units += [SkipUnit(nn.Sequential(conv, bn, relu())) for conv, bn in layers[1:-1]]
    conv, bn = layers[-1]
    units.append(SkipUnit(nn.Sequential(conv, bn), pop_skip=True, shortcut=block.downsample, post=relu()))
    return units


def resnet_units(name: str, in_shape: tuple[int, int, int], granularity: str) -> list[nn.Module]:
    channels, height, _ = in_shape
    net = RESNETS[name]()
    if height <= SMALL_IMAGE_MAX:
        # CIFAR stem: 3x3 stride-1 conv, no max-pool, so 32 px keeps 32x32 maps in layer1.
        stem = nn.Sequential(adapt_stem(net.conv1, channels, 3, 1), net.bn1, net.relu)
    else:
        stem = nn.Sequential(adapt_stem(net.conv1, channels), net.bn1, net.relu, net.maxpool)
    units = [SkipUnit(stem)]
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in layer:
            units += cut_block(block, granularity)
    return [lean_relus(unit) for unit in units]


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
        units += cut_block(BasicBlock(c_in, c_out, stride, down), granularity)
    return [lean_relus(unit) for unit in units]
