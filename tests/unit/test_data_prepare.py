"""`ffpipe data prepare`: shards cut by size, training rows shuffled across shards (read back in
source order), image sizes recorded, a manifest written last, and Hugging Face-style Parquet input."""
import io
import json

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ffpipe.config import DataConfig
from ffpipe.data import load_data
from ffpipe.data.loader import channel_stats
from ffpipe.data.parquet import read_manifest, read_meta
from ffpipe.data.prepare import prepare_shards
from ffpipe.data.sources import load_source
from ffpipe.errors import DataError
from tests.helpers.datasets import fake_idx_dataset, fake_image_folder, fake_image_parquet, pil_pixels
from tests.unit.test_data_parquet import assert_same, prepare


def shard_tables(root, split):
    return [pq.read_table(p) for p in sorted((root / split).glob("shard-*.parquet"))]


def test_shards_close_by_size_and_mix_the_classes(tmp_path, capsys):
    fake_image_folder(tmp_path / "src", per_class=8, split_dirs=())
    out = prepare(capsys, "image_folder", tmp_path / "src", tmp_path / "s", "--shard-mb", "0.005")
    tables = shard_tables(tmp_path / "s", "train")
    assert len(tables) >= 3 and f"train: {len(tables)} shard(s), " in out and "MB in " in out
    assert f"manifest: {tmp_path / 's'}/manifest.json" in out
    limit = 0.005 * 2**20
    for t in tables[:-1]:  # each closes with the image that reaches the limit, not before
        sizes = [len(b) for b in t.column("image").to_pylist()]
        assert sum(sizes) >= limit > sum(sizes[:-1])
    labels = np.concatenate([t.column("label").to_numpy() for t in tables])
    assert (np.diff(labels) < 0).any() and any(len(set(t.column("label").to_pylist())) > 1 for t in tables)
    test_index = np.concatenate([t.column("index").to_numpy() for t in shard_tables(tmp_path / "s", "test")])
    assert test_index.tolist() == list(range(len(test_index)))  # the test split keeps its order
    shards = load_data(DataConfig(name="parquet", root=str(tmp_path / "s")), seed=0)
    assert_same(load_data(DataConfig(name="image_folder", root=str(tmp_path / "src")), seed=0), shards)


def test_image_sizes_are_recorded_and_non_images_refused(tmp_path):
    folder = tmp_path / "src" / "cat"
    fake_image_folder(tmp_path / "src", classes=("cat", "dog"), per_class=3, split_dirs=())
    for i, (w, h) in enumerate([(30, 14), (9, 25)]):
        Image.new("RGB", (w, h), (i, 2, 3)).save(folder / f"odd_{i}.png")
    cfg = DataConfig(name="image_folder", root=str(tmp_path / "src"), test_fraction=0.3)
    manifest = prepare_shards(cfg, str(tmp_path / "s"))
    assert manifest["image_shape"] == [3, 0, 0]  # sizes vary: readers set data.image_size
    for split in ("train", "test"):
        for t in shard_tables(tmp_path / "s", split):
            assert t.schema.field("height").type == "int32"
            for source, h, w in zip(*(t.column(c).to_pylist() for c in ("source", "height", "width"))):
                assert Image.open(tmp_path / "src" / source).size == (w, h)
    (folder / "notes.png").write_bytes(b"these are notes, not a PNG")
    with pytest.raises(DataError, match=f"cannot read image {folder / 'notes.png'}: .*not a JPEG/PNG"):
        prepare_shards(cfg, str(tmp_path / "t"))


def test_manifest_lists_the_shards_and_the_training_statistics(tmp_path):
    fake_image_folder(tmp_path / "src", per_class=4)
    manifest = prepare_shards(DataConfig(name="image_folder", root=str(tmp_path / "src")),
                              str(tmp_path / "s"), shard_mb=0.005)
    assert read_manifest(str(tmp_path / "s")) == manifest == json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["image_format"] == "encoded"
    assert manifest["image_shape"] == [3, 20, 20] and manifest["classes"] == ["cat", "dog", "fox"]
    for split, entry in manifest["splits"].items():
        assert entry["num_rows"] == 12 and entry["bytes"] == sum(s["bytes"] for s in entry["shards"])
        for shard in entry["shards"]:
            path = tmp_path / "s" / shard["path"]
            meta = read_meta(pafs.LocalFileSystem(), str(path))
            assert (shard["rows"], shard["checksum"], shard["bytes"]) == (meta["num_rows"], meta["checksum"],
                                                                          path.stat().st_size)
            assert meta["format_version"] == 2 and meta["split"] == split
    train = load_source(DataConfig(name="image_folder", root=str(tmp_path / "src"))).train
    assert manifest["stats_images"] == 12
    assert np.allclose([manifest["mean"], manifest["std"]], channel_stats(train.images), atol=1e-9)


def test_manifest_of_raw_shards_and_its_refusals(tmp_path):
    fake_idx_dataset(tmp_path / "src")
    manifest = prepare_shards(DataConfig(name="mnist", root=str(tmp_path / "src")), str(tmp_path / "s"),
                              shard_mb=0.01)
    assert [len(manifest["splits"][s]["shards"]) for s in ("train", "test")] == [4, 2]  # 13 rows each
    train = load_source(DataConfig(name="mnist", root=str(tmp_path / "src"))).train
    assert (manifest["mean"], manifest["std"]) == channel_stats(train.images) and manifest["stats_images"] == 40
    assert manifest["image_format"] == "raw" and manifest["image_shape"] == [1, 28, 28]
    assert read_manifest(str(tmp_path / "src")) is None
    assert read_manifest(f"file://{tmp_path / 's'}") == manifest
    (tmp_path / "s" / "train" / "shard-00002.parquet").unlink()
    with pytest.raises(DataError, match="lists shard .*train/shard-00002.parquet, which is missing"):
        read_manifest(str(tmp_path / "s"))
    (tmp_path / "s" / "manifest.json").write_text('{"format_version": 2}')
    with pytest.raises(DataError, match=f"manifest {tmp_path / 's' / 'manifest.json'} is malformed .*'dataset'"):
        read_manifest(str(tmp_path / "s"))


def decoded(pngs):
    return torch.from_numpy(np.stack([pil_pixels(io.BytesIO(b)) for b in pngs]))


def test_hugging_face_parquet_round_trips(tmp_path, capsys):
    names = ["ant", "bee", "cow"]
    first = fake_image_parquet(tmp_path / "in" / "train-00000-of-00002.parquet", [0, 1, 2, 0, 1, 2, 0], names)
    second = fake_image_parquet(tmp_path / "in" / "train-00001-of-00002.parquet", [2, 2, 1, 0, 1], names, seed=1)
    test = fake_image_parquet(tmp_path / "in" / "data" / "test-00000-of-00001.parquet", [1, 0, 2], names, seed=2)
    out = prepare(capsys, "image_parquet", tmp_path / "in", tmp_path / "s", "--shard-mb", "0.002")
    assert "train: " in out and "test: 1 shard(s)" in out
    data = load_data(DataConfig(name="parquet", root=str(tmp_path / "s")), seed=0)
    assert data.train.classes == names and data.flip
    assert torch.equal(data.train.images, decoded(first + second))
    assert data.train.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 2, 2, 1, 0, 1]
    assert torch.equal(data.test.images, decoded(test)) and data.test.labels.tolist() == [1, 0, 2]
    sources = pq.read_table(tmp_path / "s" / "test" / "shard-00000.parquet").column("source").to_pylist()
    assert sources == [f"data/test-00000-of-00001.parquet#{r}" for r in range(3)]


def test_hugging_face_parquet_without_names_or_test_files(tmp_path):
    pngs = fake_image_parquet(tmp_path / "in" / "train" / "0000.parquet", [0, 3, 1, 3] * 5, size=(12, 10))
    manifest = prepare_shards(DataConfig(name="image_parquet", root=str(tmp_path / "in"), test_fraction=0.2),
                              str(tmp_path / "s"))
    assert manifest["classes"] == ["0", "1", "2", "3"] and manifest["image_shape"] == [3, 0, 0]
    assert [manifest["splits"][s]["num_rows"] for s in ("train", "test")] == [16, 4]  # 20% of 5, 10, 5
    data = load_data(DataConfig(name="parquet", root=str(tmp_path / "s"), image_size=10), seed=0)
    assert sorted(data.train.labels.tolist() + data.test.labels.tolist()) == sorted([0, 3, 1, 3] * 5)
    assert len(pngs) == 20 and data.train.shape == (3, 10, 10)


def test_hugging_face_parquet_refuses_bad_rows(tmp_path):
    bad = tmp_path / "in" / "train-0.parquet"
    fake_image_parquet(bad, [0, 1, 5, 1], ["a", "b"])
    cfg = DataConfig(name="image_parquet", root=str(tmp_path / "in"))
    with pytest.raises(DataError, match=f"{bad} row 2: label 5 is outside 0..1"):
        prepare_shards(cfg, str(tmp_path / "s"))
    table = pq.read_table(bad)
    empty = table.column("image").to_pylist()
    empty[1] = {"bytes": b"", "path": None}
    pq.write_table(table.set_column(0, "image", [empty]), bad)
    with pytest.raises(DataError, match=f"{bad} row 1: the image is empty"):
        prepare_shards(cfg, str(tmp_path / "s"))
    (tmp_path / "in" / "extra.parquet").write_bytes(b"")
    with pytest.raises(DataError, match="extra.parquet belongs to no split"):
        prepare_shards(cfg, str(tmp_path / "s"))
