"""The loader's host-memory path gives the same batches as the on-device one; the model-shape
check; the loader benchmark runs end to end on the CPU."""
import json

import pytest
import torch

from ffpipe.cli import main
from ffpipe.data import ArraySet, DeviceLoader, check_model_input
from ffpipe.data.loader import channel_stats
from ffpipe.errors import DataError
from ffpipe.run.setup import prepare
from ffpipe.run.stage_process import make_source
from tests.helpers import make_config


def small_set(n=70, shape=(3, 8, 8)):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
    return ArraySet(images, torch.arange(n) % 7, list("abcdefg"))


@pytest.mark.parametrize("train", [True, False])
def test_host_path_gives_the_same_batches_as_the_device_path(train):
    data = small_set()
    mean, std = channel_stats(data.images)
    common = dict(train=train, seed=4, augment=True, flip=True)
    on_device = DeviceLoader(data, 16, torch.device("cpu"), mean, std, **common)
    on_host = DeviceLoader(data, 16, torch.device("cpu"), mean, std, max_device_mib=0, **common)
    assert on_host.host and not on_device.host
    a, b = list(on_device.batches(1, start=1)), list(on_host.batches(1, start=1))
    assert len(a) == len(b) == len(on_device) - 1
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_stage_zero_gets_its_images_in_the_dtype_its_first_layer_reads():
    """bf16 autocast: the loader hands out bf16 images, the fp32 ones rounded (the cast the first
    conv would make); fp32 runs, and an aux term that reads the images, keep fp32."""
    from ffpipe.learners import build_learners
    from ffpipe.pipeline.stage import input_dtype

    data = small_set()
    mean, std = channel_stats(data.images)
    common = dict(train=True, seed=4, augment=True, flip=True)
    wide = DeviceLoader(data, 16, torch.device("cpu"), mean, std, **common)
    narrow = DeviceLoader(data, 16, torch.device("cpu"), mean, std, dtype=torch.bfloat16, **common)
    for (xa, ya), (xb, yb) in zip(wide.batches(0), narrow.batches(0)):
        assert xb.dtype == torch.bfloat16 and torch.equal(xa.bfloat16(), xb) and torch.equal(ya, yb)
    cpu = torch.device("cpu")
    for overrides, want in (([], None), (["train.precision=bf16"], torch.bfloat16),
                            (["train.precision=bf16", "algo.aux=reconstruction"], None),
                            (["train.precision=bf16", "algo.name=bp"], torch.bfloat16),
                            (["train.precision=bf16", "algo.name=ff", "model.name=mlp", "model.granularity=layer"], None)):
        cfg = make_config(*overrides)
        first = build_learners(cfg, (1, 28, 28), 10)[0]
        assert input_dtype(cfg.train.precision, first, cpu) == want, overrides


def test_the_size_threshold_picks_the_placement():
    data = small_set()  # 70 * 192 bytes
    mean, std = channel_stats(data.images)
    assert not DeviceLoader(data, 8, torch.device("cpu"), mean, std, train=True, max_device_mib=1).host
    assert DeviceLoader(data, 8, torch.device("cpu"), mean, std, train=True, max_device_mib=1e-4).host


def test_images_that_disagree_with_the_model_are_refused():
    with pytest.raises(DataError, match=r"images are \[3, 8, 8\].*built for \[1, 28, 28\].*data.image_size"):
        check_model_input(small_set(), (1, 28, 28), "test")


def test_a_run_reads_parquet_shards_through_make_source(tmp_path):
    cfg = make_config()
    assert main(["data", "prepare", "--dataset", "synthetic", "--out", str(tmp_path / "s"),
                 "--set", "data.synthetic_train=256", "--set", "data.synthetic_test=64",
                 "--set", "data.synthetic_shape=[3, 16, 16]"]) == 0
    direct = make_source(prepare(cfg), torch.device("cpu"))
    shards = make_source(prepare(make_config("data.name=parquet", f"data.root={tmp_path / 's'}",
                                             "data.on_device_max_mib=0")), torch.device("cpu"))
    assert shards.train.host
    for _ in range(3):
        a, b = direct.recv(), shards.recv()
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_loader_benchmark_prints_a_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "data", "--dataset", "synthetic", "--dataset", "cifar10", "--root", str(tmp_path),
                 "--device", "cpu", "--batch-size", "64", "--seconds", "0.2", "--via-parquet",
                 "--set", "data.synthetic_train=512", "--set", "data.synthetic_test=64",
                 "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "images/s" in table and "synthetic" in table and "skipped: dataset 'cifar10' not found" in table
    rows = json.loads(out.read_text())["rows"]
    assert [(r["dataset"], r["path"]) for r in rows] == [("synthetic", "direct"), ("synthetic", "parquet"),
                                                         ("cifar10", "-")]
    assert rows[0]["images"] == 512 and rows[0]["images_per_s"] > 0 and rows[1]["prepare_s"] > 0
