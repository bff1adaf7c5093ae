"""Bring your own: a model and a dataset defined in this file, named as 'module:function', train
on every backend (the sequential trainer, 2 local stages, 2 torchrun processes, 2 Ray actors) and
every pipeline learns bit for bit what the sequential trainer learns. Plug-ins that are wrong
are named with what to fix."""
import pytest
import torch
from torch import nn

from ffpipe import config as config_mod
from ffpipe.errors import ConfigError, DataError
from ffpipe.models import build_units
from tests.helpers.runs import assert_same_parameters, run_ffpipe, sequential_run, summary

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

HERE = "tests.ray.test_plugins"


def striped_images(seed: int = 0):
    """Two splits of 4 classes of 1 x 12 x 12 images: horizontal, vertical, diagonal stripes and
    noise, with noise on top (a dataset a user might generate)."""
    def split(n: int, gen: torch.Generator):
        labels = torch.arange(n) % 4
        grid = torch.arange(12)
        patterns = torch.stack([(grid[:, None] % 3 == 0).expand(12, 12), (grid[None, :] % 3 == 0).expand(12, 12),
                                ((grid[:, None] + grid[None, :]) % 4 == 0), torch.zeros(12, 12, dtype=torch.bool)])
        images = patterns[labels].float() * 180 + torch.rand(n, 12, 12, generator=gen) * 75
        return images.to(torch.uint8)[:, None], labels, ["horizontal", "vertical", "diagonal", "noise"]

    gen = torch.Generator().manual_seed(seed)
    return {"train": split(96, gen), "test": split(40, gen)}


def tiny_convnet(in_shape, width=0):
    """Three plain units (conv, norm, ReLU), as a user would write them; ffpipe makes them units."""
    c = width or 8
    return [nn.Sequential(nn.Conv2d(in_shape[0], c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()),
            nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU()),
            nn.Sequential(nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU())]


def returns_a_module(in_shape):
    return nn.Conv2d(in_shape[0], 4, 3)


def mismatched_units(in_shape):
    return [nn.Conv2d(in_shape[0], 4, 3), nn.Conv2d(5, 4, 3)]


CASE = [f"model.name={HERE}:tiny_convnet", f"data.name={HERE}:striped_images", "train.batch_size=16",
        "train.eval_batch_size=40", "train.device=cpu", "train.deterministic=true", "train.max_steps=6",
        "run.plots=false", "run.progress=false", "train.log_every=2", "data.augment=false",
        "pipeline.dashboard=false"]


def test_a_plugin_model_and_dataset_train_bit_identically_on_every_backend(tmp_path):
    ref = sequential_run(tmp_path / "sequential", CASE)
    assert len(summary(ref)["test_accuracy_per_unit"]) == 3 and summary(ref)["test_accuracy"] > 0.25  # 4 classes
    runs = {"local": (["pipeline.stages=2"], 0), "ray": (["pipeline.backend=ray", "pipeline.stages=2"], 0),
            "torchrun": ([], 2)}
    for name, (extra, stages) in runs.items():
        run_ffpipe(CASE + extra + [f"run.dir={tmp_path / name}"], stages=stages, timeout=300)
        assert summary(tmp_path / name)["num_stages"] == 2
        assert_same_parameters(ref, tmp_path / name)


def test_plugins_that_cannot_be_used_say_what_to_fix():
    def units(name: str):
        return build_units(config_mod.load(None, [f"model.name={HERE}:{name}"]).model, (1, 12, 12))

    assert len(units("tiny_convnet")) == 3
    with pytest.raises(ConfigError, match="must return a non-empty list of torch.nn.Module units"):
        units("returns_a_module")
    with pytest.raises(ConfigError, match=r"do not run one after another on inputs of shape \[1, 12, 12\]"):
        units("mismatched_units")
    with pytest.raises(ConfigError, match="has no 'nothing_here'"):
        units("nothing_here")
    with pytest.raises(ConfigError, match="cannot import no_such_package"):
        build_units(config_mod.load(None, ["model.name=no_such_package.models:net"]).model, (1, 12, 12))
    with pytest.raises(ConfigError, match="or name a function of yours as 'package.module:function'"):
        config_mod.load(None, ["model.name=resnet19"])
    from ffpipe.data.sources import load_source

    with pytest.raises(DataError, match="images must be uint8"):
        load_source(config_mod.load(None, [f"data.name={HERE}:float_images"]).data)


def float_images():
    return (torch.rand(8, 1, 4, 4), torch.zeros(8), ["a"]), (torch.rand(8, 1, 4, 4), torch.zeros(8), ["a"])
