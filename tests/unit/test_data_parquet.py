"""Parquet shards written by `ffpipe data prepare` give back exactly what their source gave; damaged
or mixed-up shards are refused with the file's name."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ffpipe.cli import main
from ffpipe.config import DataConfig
from ffpipe.data import load_data
from ffpipe.data.parquet import META_KEY
from ffpipe.data.prepare import prepare_shards
from ffpipe.data.shards import _Target, read_split
from ffpipe.errors import ConfigError, DataError
from tests.helpers import needs_fashion
from tests.helpers.datasets import fake_cifar, fake_idx_dataset, fake_image_folder, pil_pixels


def prepare(capsys, dataset: str, root, out, *extra: str) -> str:
    assert main(["data", "prepare", "--dataset", dataset, "--root", str(root), "--out", str(out), *extra]) == 0
    return capsys.readouterr().out


def assert_same(a, b):
    for split in ("train", "test"):
        x, y = getattr(a, split), getattr(b, split)
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
        assert x.classes == y.classes
    assert a.mean == b.mean and a.std == b.std and a.flip == b.flip


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "cifar100"])
def test_raw_sources_round_trip_through_shards(tmp_path, capsys, dataset):
    src = tmp_path / "src"
    if dataset == "mnist":
        fake_idx_dataset(src, n_train=50)
    else:
        fake_cifar(src, 10 if dataset == "cifar10" else 100)
    out = prepare(capsys, dataset, src, tmp_path / "shards", "--shard-size", "16")
    written = {split: len(list((tmp_path / "shards" / split).glob("shard-*.parquet"))) for split in ("train", "test")}
    assert all(n >= 1 for n in written.values())
    assert f"train: {written['train']} shard(s)" in out and f"test: {written['test']} shard(s)" in out
    cfg = dict(val_fraction=0.2, train_subset=0.5) if dataset != "cifar100" else {}
    direct = load_data(DataConfig(name=dataset, root=str(src), **cfg), seed=7)
    shards = load_data(DataConfig(name="parquet", root=str(tmp_path / "shards"), **cfg), seed=7)
    assert_same(direct, shards)  # subsets and validation parts too: the same on every backend
    if direct.val is not None:
        assert torch.equal(direct.val.images, shards.val.images)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_image_folder_shards_keep_the_files_and_decode_like_pil(tmp_path, capsys, suffix):
    fake_image_folder(tmp_path / "src", per_class=5, suffix=suffix)
    prepare(capsys, "image_folder", tmp_path / "src", tmp_path / "shards", "--shard-size", "4")
    table = pq.read_table(tmp_path / "shards" / "train" / "shard-00000.parquet")
    first = tmp_path / "src" / table.column("source")[0].as_py()
    assert table.column("image")[0].as_py() == first.read_bytes()  # the original encoded bytes
    shards = load_data(DataConfig(name="parquet", root=str(tmp_path / "shards")), seed=0)
    direct = load_data(DataConfig(name="image_folder", root=str(tmp_path / "src")), seed=0)
    assert_same(direct, shards)
    row = table.column("index")[0].as_py()  # the training rows are shuffled; index is the source place
    assert np.array_equal(shards.train.images[row].numpy(), pil_pixels(first))
    resized = load_data(DataConfig(name="parquet", root=str(tmp_path / "shards"), image_size=12), seed=0)
    assert resized.train.shape == (3, 12, 12)


def test_metadata_and_uri_reading(tmp_path):
    fake_idx_dataset(tmp_path / "src")
    prepare_shards(DataConfig(name="mnist", root=str(tmp_path / "src")), str(tmp_path / "shards"), 64)
    meta = json.loads(pq.read_schema(tmp_path / "shards" / "test" / "shard-00000.parquet").metadata[META_KEY])
    assert meta["dataset"] == "mnist" and meta["split"] == "test" and meta["image_shape"] == [1, 28, 28]
    assert meta["image_format"] == "raw" and meta["num_rows"] == 20 and len(meta["checksum"]) == 64
    assert meta["classes"] == [str(d) for d in range(10)]
    via_uri, _ = read_split(f"file://{tmp_path / 'shards'}", "train")
    local, _ = read_split(str(tmp_path / "shards"), "train")
    assert torch.equal(via_uri.images, local.images) and len(local) == 40


def test_damaged_shards_are_named(tmp_path):
    fake_idx_dataset(tmp_path / "src", n_train=60)
    prepare_shards(DataConfig(name="mnist", root=str(tmp_path / "src")), str(tmp_path / "s"), 20)
    shard = tmp_path / "s" / "train" / "shard-00001.parquet"
    table = pq.read_table(shard)
    labels = table.column("label").to_numpy().copy()
    labels[0] = (labels[0] + 1) % 10
    changed = table.set_column(1, "label", [labels]).replace_schema_metadata(table.schema.metadata)
    pq.write_table(changed, shard)
    with pytest.raises(DataError, match=f"shard {shard} fails its checksum"):
        read_split(str(tmp_path / "s"), "train")
    shard.write_bytes(shard.read_bytes()[:-300])
    with pytest.raises(DataError, match=f"shard {shard} cannot be read"):
        read_split(str(tmp_path / "s"), "train")
    shard.unlink()
    with pytest.raises(DataError, match="written as 3 shards but 2 are there \\(missing: \\[1\\]\\)"):
        read_split(str(tmp_path / "s"), "train")
    with pytest.raises(DataError, match="no Parquet shards of the 'train' split"):
        read_split(str(tmp_path / "nowhere"), "train")


def test_rows_land_at_their_index_in_any_order():
    """A shard's rows may come in any order (prepare shuffles training rows): [0, 2, 1, 3] spans
    a run of four but is no run in order."""
    target = _Target(np.zeros((4, 1), np.uint8), np.zeros(4, np.int64), np.zeros(4, bool))
    target.place("s", np.array([0, 2, 1, 3]), np.array([[10], [12], [11], [13]], np.uint8), np.arange(4))
    assert target.images[:, 0].tolist() == [10, 11, 12, 13] and target.labels.tolist() == [0, 2, 1, 3]


def test_prepare_refuses_to_mix_shards(tmp_path):
    fake_idx_dataset(tmp_path / "src")
    cfg = DataConfig(name="mnist", root=str(tmp_path / "src"))
    prepare_shards(cfg, str(tmp_path / "s"), 64)
    with pytest.raises(DataError, match="already holds Parquet shards"):
        prepare_shards(cfg, str(tmp_path / "s"), 16)
    with pytest.raises(ConfigError, match="shards already"):
        prepare_shards(DataConfig(name="parquet", root=str(tmp_path / "s")), str(tmp_path / "t"))
    (tmp_path / "s" / "test" / "shard-00000.parquet").rename(tmp_path / "s" / "train" / "shard-9.parquet")
    with pytest.raises(DataError, match="holds split 'test' but lies in the 'train' folder"):
        read_split(str(tmp_path / "s"), "train")


def test_cli_reports_user_errors_in_one_line(tmp_path, capsys):
    assert main(["data", "prepare", "--dataset", "cifar10", "--root", str(tmp_path), "--out",
                 str(tmp_path / "o")]) == 2
    assert "dataset 'cifar10' not found; looked in" in capsys.readouterr().err


@pytest.mark.slow
@needs_fashion
def test_real_fashion_mnist_through_shards(tmp_path, capsys):
    out = prepare(capsys, "fashion_mnist", "", tmp_path / "fm", "--shard-size", "10000")
    assert "train: 6 shard(s)" in out and "test: 1 shard(s)" in out
    data = load_data(DataConfig(name="parquet", root=str(tmp_path / "fm")), seed=0)
    assert len(data.train) == 60000 and len(data.test) == 10000
    assert torch.bincount(data.train.labels).tolist() == [6000] * 10
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
    assert data.flip and data.train.classes[0] == "T-shirt/top"
    assert_same(load_data(DataConfig(name="fashion_mnist"), seed=0), data)
