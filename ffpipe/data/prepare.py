"""`ffpipe data prepare`: a dataset's train and test splits written as Parquet shards of about
--shard-mb each, then ROOT/manifest.json listing them (the layout, metadata and manifest are
described in ffpipe/data/parquet.py). Small images are stored as raw uint8 bytes; image folders
and Parquet files of encoded images (ffpipe/data/image_parquet.py) keep each image's original
JPEG/PNG bytes, written as ffpipe/data/encoded.py describes and decoded when the shards are read."""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.fs as pafs

from ffpipe.config import PREPARE_INPUTS, DataConfig
from ffpipe.data.arrays import ArraySet
from ffpipe.data.encoded import SampledStats, ShardLimits, write_encoded_split
from ffpipe.data.folders import folder_splits, readable_classes
from ffpipe.data.image_parquet import parquet_splits
from ffpipe.data.loader import channel_stats
from ffpipe.data.parquet import (FORMAT_VERSION, MANIFEST, open_root, raw_column, shard_places,
                                 storage_errors, write_manifest, write_shard)
from ffpipe.data.sources import folder_root, load_source, target_size
from ffpipe.errors import ConfigError, DataError


def _write_raw_split(fs, folder: str, meta: dict, data: ArraySet, rows_per_shard: int) -> list[dict]:
    images, labels = data.images.numpy(), data.labels.numpy()
    n = len(labels)
    runs = [slice(start, min(start + rows_per_shard, n)) for start in range(0, n, rows_per_shard)]
    return [{"path": relative, **write_shard(fs, path, raw_column(images[run]), labels[run],
                                             np.arange(run.start, run.stop), shard_meta)}
            for path, relative, run, shard_meta in shard_places(folder, runs, meta)]


def _encoded_side(cfg: DataConfig, sizes: list[np.ndarray]) -> int:
    """The side recorded for encoded images: the configured one, else the one square size all
    share, else 0 (then readers must set data.image_size)."""
    if target_size(cfg):
        return target_size(cfg)
    hw = np.concatenate(sizes)
    same = (hw == hw[0]).all() and hw[0, 0] == hw[0, 1]
    return int(hw[0, 0]) if same else 0


def _encoded_splits(cfg: DataConfig) -> tuple[dict, list[str]]:
    if cfg.name in PREPARE_INPUTS:
        if not cfg.root:
            raise ConfigError("--dataset image_parquet needs --root DIR, the folder of Parquet files")
        train, test = parquet_splits(Path(cfg.root).expanduser(), cfg.test_fraction, cfg.split_seed,
                                     cfg.decode_threads)
        return {"train": train, "test": test}, train.classes
    train, test = folder_splits(folder_root(cfg), cfg.test_fraction, cfg.split_seed)
    return {"train": train, "test": test}, readable_classes(train.classes)


# A plan: (split name -> its writer: (fs, folder, meta) -> manifest entries, what every shard's
# metadata and the manifest share, a function giving the manifest's mean, std and stats_images).
def _encoded_plan(cfg: DataConfig, limits: ShardLimits) -> tuple[dict, dict, Callable[[], dict]]:
    splits, classes = _encoded_splits(cfg)
    sizes = {name: split.sizes(cfg.decode_threads) for name, split in splits.items()}
    side = _encoded_side(cfg, list(sizes.values()))
    stats = SampledStats(len(splits["train"].labels), side, cfg.split_seed, cfg.decode_threads)
    writers = {"train": partial(write_encoded_split, split=splits["train"], sizes_N2=sizes["train"],
                                limits=limits, seed=cfg.split_seed, stats=stats),
               "test": partial(write_encoded_split, split=splits["test"], sizes_N2=sizes["test"],
                               limits=limits, seed=None)}
    shared = {"format_version": FORMAT_VERSION, "classes": classes, "image_format": "encoded",
              "image_shape": [3, side, side]}
    return writers, shared, stats.result


def _raw_plan(cfg: DataConfig, limits: ShardLimits) -> tuple[dict, dict, Callable[[], dict]]:
    source = load_source(cfg)
    rows = limits.rows or max(1, limits.bytes // math.prod(source.train.shape))
    writers = {name: partial(_write_raw_split, data=data, rows_per_shard=rows)
               for name, data in (("train", source.train), ("test", source.test))}
    shared = {"format_version": 1, "classes": source.train.classes, "image_format": "raw",
              "image_shape": list(source.train.shape)}

    def stats() -> dict:
        mean, std = channel_stats(source.train.images)
        return {"mean": mean, "std": std, "stats_images": len(source.train)}
    return writers, shared, stats


def _clear_the_way(fs, base: str, splits) -> None:
    """Old shards beside new ones would mix two datasets (or two shard sizes) in one split; an
    old manifest would describe shards that are no longer there."""
    for name in splits:
        folder = f"{base}/{name}"
        with storage_errors(f"cannot write shards into {folder}"):
            infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        if any(i.path.endswith(".parquet") for i in infos):
            raise DataError(f"{folder} already holds Parquet shards; write into an empty --out folder "
                            "or delete the old shards first")
    with storage_errors(f"cannot write into {base}"):
        if fs.get_file_info(f"{base}/{MANIFEST}").type == pafs.FileType.File:
            fs.delete_file(f"{base}/{MANIFEST}")


def _check_args(cfg: DataConfig, shard_size: int, shard_mb: float) -> None:
    if cfg.name == "parquet":
        raise ConfigError("--dataset parquet: the data are shards already; name the dataset they "
                          "come from (e.g. cifar10), or read them with data.name = 'parquet'")
    if shard_size < 0:
        raise ConfigError(f"--shard-size must be >= 0 (0 = by --shard-mb only), got {shard_size}")
    if not shard_mb > 0:
        raise ConfigError(f"--shard-mb must be > 0, got {shard_mb}")


def prepare_shards(cfg: DataConfig, out: str, shard_size: int = 0, shard_mb: float = 256) -> dict:
    """Write every split of the dataset `cfg` names under `out` (a folder or a URI), shards closing
    once their image bytes reach `shard_mb` MiB (or at `shard_size` rows, if > 0), then
    out/manifest.json; returns the manifest."""
    _check_args(cfg, shard_size, shard_mb)
    plan = _encoded_plan if cfg.name in ("imagenette", "image_folder", *PREPARE_INPUTS) else _raw_plan
    writers, shared, stats = plan(cfg, ShardLimits(max(1, int(shard_mb * 2**20)), shard_size))
    fs, base = open_root(out)
    base = base.rstrip("/")
    _clear_the_way(fs, base, writers)
    splits = {}
    for name, write in writers.items():
        folder = f"{base}/{name}"
        with storage_errors(f"cannot write shards into {folder}"):
            fs.create_dir(folder, recursive=True)
            entries = write(fs, folder, {"dataset": cfg.name, "split": name, **shared})
        splits[name] = {"num_rows": sum(e["rows"] for e in entries),
                        "bytes": sum(e["bytes"] for e in entries), "shards": entries}
    manifest = {"format_version": FORMAT_VERSION, "dataset": cfg.name, "classes": shared["classes"],
                "image_format": shared["image_format"], "image_shape": shared["image_shape"],
                **stats(), "splits": splits}
    with storage_errors(f"cannot write into {base}"):
        write_manifest(fs, base, manifest)
    return manifest
