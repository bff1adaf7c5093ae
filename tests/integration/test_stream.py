"""The streamed source read as stage 0 reads it: every row once per epoch in the seeded order, a
resumed stream equal to the uninterrupted one, replicas' rows that join into the whole batch, a
memory bound set by the shuffle window, and damaged shards or images named, never trained on."""
import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

from ffpipe.config import DataConfig
from ffpipe.data import eval_loader, load_data, training_loader
from ffpipe.data.parquet import write_shard
from ffpipe.data.stream import wants_stream
from ffpipe.data.stream.order import epoch_order
from ffpipe.data.stream.reader import ShardStore
from ffpipe.data.subset import held_out_per_class, subset_indices
from ffpipe.errors import ConfigError, DataError
from tests.helpers.streams import shards, stream_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return shards(tmp_path_factory.mktemp("stream"))


def epoch(loader, e=0, start=0):
    return [(x.clone(), y.clone()) for x, y in loader.batches(e, start)]


def source_columns(root, split="train"):
    """(source index, label) of every row of the split's shards, in shard order."""
    files = sorted((root / split).glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f, columns=["index", "label"]) for f in files])
    return table.column("index").to_numpy(), table.column("label").to_numpy()


def shard_labels(root, split="train"):
    return source_columns(root, split)[1]


def test_an_epoch_streams_every_row_once_in_the_seeded_order(root):
    cfg = stream_config(root)
    data = load_data(cfg, seed=0)
    assert len(data.train) == 48 and data.train.shape == (3, 16, 16) and data.flip
    assert data.train.classes == ["class0", "class1", "class2"] and len(data.mean) == 3
    loader = training_loader(data, cfg, batch_size=8, seed=5, device=CPU)
    batches = epoch(loader)
    assert len(batches) == 6 and all(x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 for x, _ in batches)
    order = epoch_order(data.train.rows_per_shard, 5, 0, cfg.shuffle_window)
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels, torch.from_numpy(shard_labels(root)[order.use_ids]))
    # the colour gives the class away: the crops are of the right images
    red = torch.stack([x[y == 0][:, 0].mean() - x[y == 0][:, 2].mean() for x, y in batches if (y == 0).any()])
    assert (red > 1).all()
    again = epoch(loader)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    assert not torch.equal(torch.cat([y for _, y in epoch(loader, 1)]), labels)


def test_a_stream_resumed_at_a_batch_equals_the_uninterrupted_one(root):
    cfg = stream_config(root)
    loader = training_loader(load_data(cfg, 0), cfg, 8, 3, CPU)
    whole, resumed = epoch(loader, 2), epoch(loader, 2, start=4)
    assert len(resumed) == 2
    for (xa, ya), (xb, yb) in zip(whole[4:], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_the_next_epochs_first_window_is_read_before_it_starts_and_changes_no_batch(root):
    cfg = stream_config(root)
    data = load_data(cfg, 0)
    loader = training_loader(data, cfg, 8, 3, CPU)
    epoch(loader, 0)
    (key, order, store), = [loader._prepared]  # made once epoch 0 had asked for its last shard
    assert key == (1, 0) and [k for k, _ in store.reading] == list(order.shard_order[:store.ahead])
    ahead = epoch(loader, 1)
    assert loader._prepared[0] == (2, 0)
    fresh = epoch(training_loader(data, cfg, 8, 3, CPU), 1)
    assert len(ahead) == len(fresh) == 6
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ahead, fresh))
    epoch(loader, 2, start=3)  # not the epoch prepared for (a resume): a store of its own, same rows
    loader.close()
    assert loader._prepared is None
    test = eval_loader(data.test, data, cfg, 7, CPU)
    epoch(test)
    assert test._prepared is None  # evaluation starts once an epoch: no window held meanwhile


def test_a_uri_pyarrow_opens_streams_the_same_batches(root):
    cfg, uri = stream_config(root), stream_config(f"file://{root}")
    local, remote = (epoch(training_loader(load_data(c, 0), c, 8, 0, CPU)) for c in (cfg, uri))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(local, remote))


def test_replicas_decode_their_own_rows_which_join_into_the_whole_batch(root):
    cfg = stream_config(root)
    data = load_data(cfg, 0)
    whole = epoch(training_loader(data, cfg, 8, 0, CPU))
    cuts = [lambda n: slice(0, 3), lambda n: slice(3, n)]
    parts = [epoch(training_loader(data, cfg, 8, 0, CPU, keep_rows=cut)) for cut in cuts]
    for (x, y), (xa, ya), (xb, yb) in zip(whole, *parts):
        assert torch.equal(torch.cat([xa, xb]), x) and torch.equal(torch.cat([ya, yb]), y)
    loader = training_loader(data, cfg, 8, 0, CPU, keep_rows=cuts[1])
    next(iter(loader.batches(0)))
    assert loader.shard == (3, 8)  # where its rows lie in the whole batch, for the messages


def test_evaluation_streams_the_test_split_in_order_with_centre_crops(root):
    cfg = stream_config(root)
    data = load_data(cfg, 0)
    batches = epoch(eval_loader(data.test, data, cfg, 7, CPU))
    assert [len(y) for _, y in batches] == [7, 7, 4]
    assert torch.equal(torch.cat([y for _, y in batches]), torch.from_numpy(shard_labels(root, "test")))
    assert torch.equal(batches[0][0], epoch(eval_loader(data.test, data, cfg, 7, CPU))[0][0])


def test_memory_holds_the_window_and_the_shards_read_ahead_not_the_split(root):
    data = load_data(stream_config(root), 0)
    order = epoch_order(data.train.rows_per_shard, 0, 0, window=12)
    store = ShardStore(data.train, order, used=0, ahead=2)
    most = 0
    try:
        for b in range(0, 48, 4):
            store.take(order.use_ids[b:b + 4], slice(0, 4))
            most = max(most, sum(len(s.labels) for s in store.loaded.values()))
    finally:
        store.close()
    assert most <= 12 + 2 * 10 and not store.loaded  # a window plus the shards it straddles; all let go


def flip_a_byte(path, where=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_shard_stops_the_stream_naming_the_file(tmp_path, damage):
    root = shards(tmp_path, per_class=8)
    victim = sorted((root / "train").glob("*.parquet"))[1]
    if damage == "flipped":
        flip_a_byte(victim, 0.3)
    else:
        victim.write_bytes(victim.read_bytes()[:-200])
    cfg = stream_config(root)
    with pytest.raises(DataError, match=str(victim.name)):
        epoch(training_loader(load_data(cfg, 0), cfg, 4, 0, CPU))


def test_an_image_that_does_not_decode_is_named_with_shard_row_and_file(tmp_path):
    root = shards(tmp_path, per_class=4)
    victim = sorted((root / "train").glob("*.parquet"))[0]
    table = pq.read_table(victim)
    meta = json.loads(table.schema.metadata[b"ffpipe"])
    images = table.column("image").to_pylist()
    images[2] = images[2][:40]  # a JPEG cut short (whole shards, good checksum: damaged at the source)
    victim.unlink()
    extra = {k: table.column(k).combine_chunks() for k in ("source", "height", "width")}
    written = write_shard(pafs.LocalFileSystem(), str(victim), pa.array(images, pa.large_binary()),
                          table.column("label").to_numpy(), table.column("index").to_numpy(), meta, extra)
    manifest = json.loads((root / "manifest.json").read_text())  # as prepare would have listed it
    manifest["splits"]["train"]["shards"][0].update(written)
    (root / "manifest.json").write_text(json.dumps(manifest))
    cfg = stream_config(root, shuffle_window=1)
    source = table.column("source")[2].as_py()
    with pytest.raises(DataError, match=rf"row 2 of shard .*{victim.name} \({source}\)"):
        epoch(training_loader(load_data(cfg, 0), cfg, 4, 0, CPU))


def test_the_dry_run_says_the_data_will_stream(root):
    from ffpipe import config as config_mod
    from ffpipe.backends.dry_run import plan_run

    cfg = config_mod.load(None, [f"data.root={root}", "data.name=parquet", "data.stream=on", "data.image_size=16",
                                 "model.name=small_cnn", "train.batch_size=8", "train.device=cpu"])
    assert "# data: parquet, 48 training images of 3 x 16 x 16 in 3 classes, streamed from shards" in plan_run(cfg)


def test_validation_part_and_subset_take_the_images_the_in_memory_path_takes(root):
    """data.val_fraction and data.train_subset pick the images an in-memory read of the same
    shards picks (by label, in the source's order); the stream then uses just those, the
    held-out part for evaluation."""
    cfg = stream_config(root, val_fraction=0.25, train_subset=8)
    data, memory = load_data(cfg, seed=4), load_data(replace(cfg, stream="off"), seed=4)
    index, labels = source_columns(root)
    by_source = torch.from_numpy(labels[np.argsort(index)])  # what the in-memory reader holds
    kept, held = held_out_per_class(by_source, data.train.classes, 0.25, cfg.split_seed, "x")
    chosen = kept[subset_indices(by_source[kept], data.train.classes, 8, 4)]
    ids = epoch_order(data.train.rows_per_shard, 0, 0, cfg.shuffle_window, keep=data.train.keep).use_ids
    assert sorted(index[ids]) == chosen.tolist() and len(chosen) == 24
    streamed = torch.cat([y for _, y in epoch(training_loader(data, cfg, 8, 0, CPU))])
    assert torch.equal(streamed, torch.from_numpy(labels[ids]))
    assert sorted(streamed.tolist()) == sorted(memory.train.labels.tolist())
    val = torch.cat([y for _, y in epoch(eval_loader(data.val, data, cfg, 5, CPU))])
    assert sorted(index[data.val.keep.nonzero()[0]]) == held.tolist()
    assert sorted(val.tolist()) == sorted(memory.val.labels.tolist())
    assert wants_stream(stream_config(root, stream="auto", in_memory_max_gib=1e-6))
    assert not wants_stream(stream_config(root, stream="auto"))  # 48 small images: read into memory
    with pytest.raises(ConfigError, match="data prepare"):
        DataConfig(name="cifar10", stream="on").validate()


def test_cutout_squares_the_streamed_crops_at_the_dataset_mean(root):
    plain, cut = stream_config(root), stream_config(root, cutout=6)
    data = load_data(plain, 0)
    a, b = (epoch(training_loader(data, c, 8, 0, CPU))[0][0] for c in (plain, cut))
    zeroed = (b == 0).all(dim=1)  # after normalising, 0 is the mean: a square of zeros per image
    assert all(zeroed[i].sum() >= 9 for i in range(8)) and not (a == 0).all(dim=1).any()
    assert torch.equal(a[~zeroed[:, None].expand_as(a)], b[~zeroed[:, None].expand_as(b)])


def test_bench_stream_makes_an_imagenet_like_set_and_measures_the_stream(tmp_path, capsys):
    from ffpipe.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "stream", "--root", str(tmp_path / "inet"), "--make", "40", "--classes", "4",
                 "--seconds", "1", "--batch-size", "8", "--image-size", "32", "--workers", "1", "2",
                 "--load", "none", "default", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["made"]["images"] == 44 and 60 < result["made"]["mean_kb"] < 160  # ~500 x 375 JPEGs
    assert [(r["decode"], r["workers"], r["load"]) for r in result["rows"]] == [
        ("cpu", 1, "none"), ("cpu", 1, "default"), ("cpu", 2, "none"), ("cpu", 2, "default")]
    assert [r["load_products_per_s"] > 0 for r in result["rows"]] == [False, True, False, True]
    assert all(r["images_per_s"] > 0 and r["rss_peak_mib"] > 0 and "read" in r["busy"] for r in result["rows"])
    # 40 images in batches of 8: a new epoch every 5 batches, whose first batch and the wait for
    # it the rate within epochs leaves out
    assert all(r["epoch_starts"] >= 1 and r["epoch_start_s"] > 0 for r in result["rows"])
    assert all(r["images_per_s_within_epochs"] > 0 for r in result["rows"])
    assert "in epochs" in capsys.readouterr().out


def _codecs():
    from ffpipe.data.stream import decoders

    return [c for c in (decoders.torchvision_codecs(), decoders.torchcodec_codecs()) if c is not None]


@pytest.mark.parametrize("codec", _codecs(), ids=lambda c: c.name)
def test_the_gpu_decoders_crops_agree_with_pils_and_name_a_damaged_image(root, codec):
    """GpuDecoder's own path (TorchCodec's or torchvision's decoders, torch's antialiased resize)
    run on the CPU: the same boxes as PIL's, the pixels within rounding; a damaged image is named.
    On a GPU, tests/gpu/test_stream_gpu.py checks nvJPEG the same way."""
    from ffpipe.data.stream.crops import eval_box
    from ffpipe.data.stream.decoders import CpuDecoder, GpuDecoder

    data = load_data(stream_config(root, image_size=32), 0)
    order = epoch_order(data.train.rows_per_shard, 0, 0, 1, shuffle=False)
    store = ShardStore(data.train, order, 0, ahead=8)
    blobs, _, names = store.take(order.use_ids[:12], slice(0, 12))
    store.close()
    box_of, flat = (lambda i, h, w: eval_box(h, w)), np.zeros(12, dtype=bool)
    gpu_path, pil = GpuDecoder(CPU, 2, codec), CpuDecoder(2)
    try:
        ours = gpu_path.batch(blobs, names, box_of, 32, flat)
        diff = (ours - pil.batch(blobs, names, box_of, 32, flat).float()).abs()
        assert diff.mean() < 1.0 and diff.max() < 16
        blobs[5] = np.asarray(blobs[5])[:50]
        with pytest.raises(DataError, match=r"row \d+ of shard .*\.parquet \(train/"):
            gpu_path.batch(blobs, names, box_of, 32, flat)
    finally:
        gpu_path.close()
        pil.close()
