import copy

import pytest
import torch

from ffpipe.config import ModelConfig
from ffpipe.errors import ConfigError
from ffpipe.models import build_units, dry_run


@pytest.mark.parametrize("name, granularity, count", [
    ("resnet18", "block", 9), ("resnet18", "layer", 17),
    ("mobilenet_v3_small", "block", 13), ("mobilenet_v3_small", "layer", 34),
    ("mobilenet_v3_large", "block", 17), ("mobilenet_v3_large", "layer", 46),
    ("small_cnn", "block", 4), ("small_cnn", "layer", 7), ("mlp", "layer", 3),
])
def test_unit_counts(name, granularity, count):
    assert len(build_units(ModelConfig(name=name, granularity=granularity), (3, 32, 32))) == count


def test_resnet18_stems_and_shapes_from_the_meta_dry_run():
    cifar = dry_run(build_units(ModelConfig(name="resnet18"), (3, 32, 32)), (3, 32, 32))
    assert [s.out for s in cifar][:2] == [(64, 32, 32), (64, 32, 32)]
    assert cifar[-1].out == (512, 4, 4)
    imagenet = dry_run(build_units(ModelConfig(name="resnet18"), (3, 160, 160)), (3, 160, 160))
    assert imagenet[0].out == (64, 40, 40)  # 7x7 stride-2 conv and max-pool
    assert imagenet[-1].out == (512, 5, 5)


def test_layer_units_carry_the_block_input_as_a_skip():
    shapes = dry_run(build_units(ModelConfig(name="resnet18", granularity="layer"), (3, 32, 32)), (3, 32, 32))
    assert [len(s.skips) for s in shapes[:5]] == [0, 1, 0, 1, 0]
    assert shapes[1].skips == ((64, 32, 32),)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "small_cnn", "mlp"])
def test_one_channel_inputs_work(name):
    units = build_units(ModelConfig(name=name, granularity="layer"), (1, 28, 28))
    x, skips = torch.randn(2, 1, 28, 28), ()
    for unit in units:
        x, skips = unit(x, skips)
    assert torch.isfinite(x).all() and skips == ()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "small_cnn"])
def test_layer_units_chained_compute_the_same_network_as_blocks(name):
    torch.manual_seed(0)
    blocks = build_units(ModelConfig(name=name, granularity="block"), (3, 32, 32))
    torch.manual_seed(0)
    layers = build_units(ModelConfig(name=name, granularity="layer"), (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    outs = []
    for units in (blocks, layers):
        h, skips = x, ()
        for unit in units:
            unit.eval()
            h, skips = unit(h, skips)
        outs.append(h)
    torch.testing.assert_close(outs[0], outs[1])


def test_granularity_the_model_lacks_is_a_clear_error():
    with pytest.raises(ConfigError, match="'mlp' has no 'block' granularity"):
        build_units(ModelConfig(name="mlp", granularity="block"), (1, 28, 28))


def test_lean_batch_norm_is_batch_norm_off_the_gpu_with_the_same_state_keys():
    from ffpipe.kernels.batchnorm import LeanBatchNorm, lean_batchnorms

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    net[1].running_mean.fill_(0.5)
    keys = list(net.state_dict())
    plain = copy.deepcopy(net)
    lean_batchnorms(net)
    assert isinstance(net[1], LeanBatchNorm) and list(net.state_dict()) == keys
    assert torch.equal(net[1].running_mean, plain[1].running_mean)
    x = torch.randn(5, 3, 8, 8)
    assert torch.equal(net(x), plain(x))
    assert torch.equal(net[1].running_var, plain[1].running_var)


def test_lean_relu_masks_the_incoming_gradient_in_place_with_torchs_values():
    """ResNet units use LeanReLU: the same parameters' gradients bit for bit as nn.ReLU, with
    the ReLU backward written over the arriving gradient (no new tensor)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from ffpipe.kernels.relu import LeanReLU

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    unit = build_units(ModelConfig(name="resnet18"), (3, 32, 32))[1]
    assert isinstance(unit.body.relu, LeanReLU)
    plain = copy.deepcopy(unit)
    plain.body.relu = torch.nn.ReLU(inplace=True)
    x, w = torch.randn(4, 64, 32, 32), torch.randn(64, 32, 32)
    grads = []
    for net in (unit, plain):
        ops = Ops()
        with ops:
            ((net(x)[0] * w).square().mean()).backward()
        grads.append([p.grad for p in net.parameters()])
        in_place = ops.names.count("aten.threshold_backward.grad_input")
        assert in_place == (2 if net is unit else 0)  # the block's two ReLU calls
    for mine, torchs in zip(*grads):
        assert torch.equal(mine, torchs)
    # an expanded gradient (of a sum) is not written: a new tensor, the same values
    z = torch.randn(3, 5, requires_grad=True)
    LeanReLU()(z * 1).sum().backward()
    assert torch.equal(z.grad, (z > 0).float())
