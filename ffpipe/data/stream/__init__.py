"""Data larger than memory: stage 0 streams encoded images out of Parquet shards written by
`ffpipe data prepare`, decodes and crops them batch by batch (on the GPU where there is one), and
holds only a shuffle window of encoded rows in host memory, never the dataset.

data.stream decides (config_data.DataConfig): 'on', 'off', or 'auto', which streams the
shards of JPEG/PNG images whose decoded training split would not fit in data.in_memory_max_gib.
Streamed training batches take ImageNet's training crop (random-resized crop and mirror), and
evaluation its centre crop (crops.py); in-memory data keeps its crop-with-padding.
"""
from __future__ import annotations

import numpy as np
import torch

from ffpipe.config import DataConfig
from ffpipe.data.loader import channel_stats
from ffpipe.data.parquet import open_root, read_manifest, read_meta, shard_paths
from ffpipe.data.stream.crops import EVAL_CROP, eval_box
from ffpipe.data.stream.decoders import CpuDecoder
from ffpipe.data.stream.loader import StreamLoader
from ffpipe.data.stream.order import epoch_order
from ffpipe.data.stream.reader import ShardStore
from ffpipe.data.stream.split import DEFAULT_SIDE, StreamSplit, open_split
from ffpipe.data.subset import held_out_per_class, subset_indices
from ffpipe.errors import DataError

STATS_ROWS = 512  # images the channel statistics come from when the shards have no manifest


def wants_stream(cfg: DataConfig) -> bool:
    """Whether the training and test splits are streamed (data.stream; 'auto' reads one footer)."""
    if cfg.stream == "off" or cfg.name != "parquet":
        return False  # 'on' with another dataset is refused by the config's own check
    if cfg.stream == "on":
        return True
    fs, base = open_root(cfg.root)
    paths = shard_paths(fs, base, "train", cfg.root)
    meta = read_meta(fs, paths[0])
    if meta["image_format"] != "encoded":
        return False
    side = cfg.image_size or meta["image_shape"][1] or DEFAULT_SIDE
    return meta["split_rows"] * 3 * side * side > cfg.in_memory_max_gib * 2**30


def sample_stats(split: StreamSplit, threads: int) -> tuple[list[float], list[float]]:
    """Channel mean and std of the first STATS_ROWS training rows (their evaluation crops)."""
    order = epoch_order(split.rows_per_shard, 0, 0, 1, shuffle=False)
    n = min(STATS_ROWS, len(split))
    store = ShardStore(split, order, 0, ahead=1)
    decoder = CpuDecoder(threads)
    try:
        blobs, _, names = store.take(order.use_ids[:n], slice(0, n))
        images = decoder.batch(blobs, names, lambda i, h, w: eval_box(h, w), min(split.side, 64),
                               np.zeros(n, dtype=bool))
    finally:
        store.close()
        decoder.close()
    return channel_stats(images)


def parts(train: StreamSplit, cfg: DataConfig, seed: int) -> tuple[StreamSplit, StreamSplit | None]:
    """(training part, validation part or None) of the training split, with the images the
    in-memory path takes from the same shards: data.val_fraction held out by data.split_seed,
    then data.train_subset of what is left drawn by `seed`, both in the source's order (the
    label and index columns are read, no image)."""
    if not (cfg.val_fraction or cfg.train_subset):
        return train, None
    rows, labels = train.source_order()
    labels = torch.from_numpy(labels)
    kept, val = torch.arange(len(labels)), None
    if cfg.val_fraction:
        kept, held = held_out_per_class(labels, train.classes, cfg.val_fraction, cfg.split_seed,
                                        "data.val_fraction")
        val = train.select(rows[held.numpy()])
    if cfg.train_subset:
        kept = kept[subset_indices(labels[kept], train.classes, cfg.train_subset, seed)]
    return train.select(rows[kept.numpy()]), val


def stream_splits(cfg: DataConfig, seed: int, threads: int
                  ) -> tuple[StreamSplit, StreamSplit, StreamSplit | None, list[float], list[float]]:
    """(train, validation or None, test, mean, std) of the shards under data.root, nothing
    decoded but a sample for the statistics where the shards carry none."""
    manifest = read_manifest(cfg.root)  # once: it checks that every shard it lists is there
    train, meta = open_split(cfg.root, "train", cfg.image_size, manifest)
    test, _ = open_split(cfg.root, "test", train.side, manifest)
    if test.classes != train.classes:
        raise DataError(f"the test shards in {cfg.root} have {len(test.classes)} classes and the "
                        f"training shards {len(train.classes)}; prepare both splits together")
    mean, std = (list(meta["mean"]), list(meta["std"])) if "mean" in meta and "std" in meta \
        else sample_stats(train, threads)
    return (*parts(train, cfg, seed), test, mean, std)


__all__ = ["EVAL_CROP", "StreamLoader", "StreamSplit", "stream_splits", "wants_stream"]
