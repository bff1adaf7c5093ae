"""`ffpipe data prepare`: a dataset's train and test splits written as Parquet shards (the layout
and metadata are described in ffpipe/data/parquet.py). Small images are stored as raw uint8
bytes; image folders keep each file's original JPEG/PNG bytes, decoded when the shards are read."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from ffpipe.config import DataConfig
from ffpipe.data.arrays import ArraySet
from ffpipe.data.decode import common_size
from ffpipe.data.folders import FileSplit, folder_splits, readable_classes
from ffpipe.data.parquet import ARROW_ERRORS, open_root, raw_column, write_shard
from ffpipe.data.sources import folder_root, load_source, target_size
from ffpipe.errors import ConfigError, DataError

SPLITS = ("train", "test")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read image {path}: {err}") from None


def _shards(folder: str, n: int, shard_size: int, meta: dict):
    """(path, rows, metadata) of each shard of a split of n rows."""
    starts = range(0, n, shard_size)
    for k, start in enumerate(starts):
        shard_meta = {**meta, "shard": k, "num_shards": len(starts), "split_rows": n}
        yield f"{folder}/shard-{k:05d}.parquet", slice(start, min(start + shard_size, n)), shard_meta


def _write_raw_split(fs, folder: str, data: ArraySet, meta: dict, shard_size: int) -> list[str]:
    images, labels = data.images.numpy(), data.labels.numpy()
    paths = []
    for path, rows, shard_meta in _shards(folder, len(labels), shard_size, meta):
        write_shard(fs, path, raw_column(images[rows]), labels[rows],
                    np.arange(rows.start, rows.stop), shard_meta)
        paths.append(path)
    return paths


def _write_encoded_split(fs, folder: str, split: FileSplit, meta: dict, shard_size: int) -> list[str]:
    """One shard's files read at a time: memory holds a shard, never the whole dataset."""
    labels, sources = split.labels.numpy(), split.relative()
    paths = []
    for path, rows, shard_meta in _shards(folder, len(labels), shard_size, meta):
        blobs = pa.array([_read_bytes(f) for f in split.files[rows]], pa.large_binary())
        write_shard(fs, path, blobs, labels[rows], np.arange(rows.start, rows.stop), shard_meta,
                    sources[rows])
        paths.append(path)
    return paths


def _encoded_side(cfg: DataConfig, splits: dict[str, FileSplit]) -> int:
    """The side recorded for encoded images: the configured one, else the one size all share,
    else 0 (then readers must set data.image_size)."""
    if target_size(cfg):
        return target_size(cfg)
    files = [f for s in splits.values() for f in s.files]
    try:
        return common_size(files, [str(f) for f in files], cfg.decode_threads)
    except DataError as err:
        if "differ in size" not in str(err):
            raise
        return 0


def _splits(cfg: DataConfig) -> tuple[dict, dict]:
    """(split name -> ArraySet or FileSplit, metadata shared by all shards)."""
    if cfg.name in ("imagenette", "image_folder"):
        train, test = folder_splits(folder_root(cfg), cfg.test_fraction, cfg.split_seed)
        splits = {"train": train, "test": test}
        side = _encoded_side(cfg, splits)
        return splits, {"classes": readable_classes(train.classes), "image_shape": [3, side, side],
                        "image_format": "encoded"}
    source = load_source(cfg)
    return ({"train": source.train, "test": source.test},
            {"classes": source.train.classes, "image_shape": list(source.train.shape), "image_format": "raw"})


def _refuse_old_shards(fs, folder: str) -> None:
    """Old shards beside new ones would mix two datasets (or two shard sizes) in one split."""
    infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    if any(i.path.endswith(".parquet") for i in infos):
        raise DataError(f"{folder} already holds Parquet shards; write into an empty --out folder "
                        "or delete the old shards first")


def prepare_shards(cfg: DataConfig, out: str, shard_size: int = 10_000) -> dict[str, list[str]]:
    """Write every split of the dataset `cfg` names under `out` (a folder or a URI); returns the
    shard paths of each split."""
    if cfg.name == "parquet":
        raise ConfigError("--dataset parquet: the data are shards already; name the dataset they "
                          "come from (e.g. cifar10), or read them with data.name = 'parquet'")
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be >= 1, got {shard_size}")
    splits, shared = _splits(cfg)
    fs, base = open_root(out)
    written = {}
    for name, split in splits.items():
        folder = f"{base.rstrip('/')}/{name}"
        meta = {"format_version": 1, "dataset": cfg.name, "split": name, **shared}
        try:
            _refuse_old_shards(fs, folder)
            fs.create_dir(folder, recursive=True)
            writer = _write_raw_split if isinstance(split, ArraySet) else _write_encoded_split
            written[name] = writer(fs, folder, split, meta, shard_size)
        except DataError:
            raise
        except ARROW_ERRORS as err:
            raise DataError(f"cannot write shards into {folder}: {type(err).__name__}: {err}") from None
    return written
