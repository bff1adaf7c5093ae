"""The deeper ResNets (issue 15): torchvision's definitions cut into units."""
import pytest
import torch
from torchvision import models as tv

from ffpipe.config import ModelConfig
from ffpipe.models import build_units, dry_run

DEEP = {"resnet34": (17, 33), "resnet50": (17, 49), "resnet101": (34, 100), "resnet152": (51, 151),
        "wide_resnet50_2": (17, 49)}


@pytest.mark.parametrize("name", sorted(DEEP))
def test_deep_resnets_have_a_unit_per_block_or_per_layer(name):
    blocks, layers = DEEP[name]
    assert len(build_units(ModelConfig(name=name, granularity="block"), (3, 32, 32))) == blocks
    assert len(build_units(ModelConfig(name=name, granularity="layer"), (3, 32, 32))) == layers


def test_bottleneck_layer_units_push_pass_and_pop_the_skip():
    shapes = dry_run(build_units(ModelConfig(name="resnet50", granularity="layer"), (3, 224, 224)), (3, 224, 224))
    assert shapes[0].out == (64, 56, 56)  # ImageNet stem: 7x7 stride 2 and max-pool
    assert [len(s.skips) for s in shapes[:7]] == [0, 1, 1, 0, 1, 1, 0]
    assert shapes[1].skips == ((64, 56, 56),) and shapes[3].out == (256, 56, 56)
    assert shapes[-1].out == (2048, 7, 7)
    wide = dry_run(build_units(ModelConfig(name="wide_resnet50_2"), (3, 224, 224)), (3, 224, 224))
    assert wide[1].out == (256, 56, 56) and wide[-1].out == (2048, 7, 7)


@pytest.mark.parametrize("granularity", ["block", "layer"])
def test_resnet50_units_chained_are_torchvision_resnet50(granularity):
    """Same modules, same order: the units' output is torchvision's feature map."""
    torch.manual_seed(0)
    units = build_units(ModelConfig(name="resnet50", granularity=granularity), (3, 96, 96))
    torch.manual_seed(0)
    net = tv.resnet50().eval()
    x = torch.randn(2, 3, 96, 96)
    h, skips = x, ()
    for unit in units:
        unit.eval()
        h, skips = unit(h, skips)
    want = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
    torch.testing.assert_close(h, want)
    assert skips == ()
