"""Reading a split's Parquet shards into an ArraySet: shard by shard, batch by batch, so memory
beyond the output array stays bounded; each shard's checksum is verified as it streams past, and
rows land at their original index, so shards give exactly the arrays the source gave."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from ffpipe.data.arrays import ArraySet
from ffpipe.data.decode import decode_all
from ffpipe.data.parquet import (ARROW_ERRORS, Checksum, binary_values, check_shard, damaged_shard, open_root,
                                 shard_paths, split_meta)
from ffpipe.errors import DataError

RAW_BATCH_ROWS = 4096
ENCODED_BATCH_ROWS = 256  # decoded images are large: a smaller batch keeps the temporary small


@dataclass
class _Target:
    images: np.ndarray  # uint8 N x C x H x W, filled by index
    labels: np.ndarray  # int64 N
    seen: np.ndarray    # bool N: which rows have arrived

    def place(self, path: str, index: np.ndarray, images: np.ndarray, labels: np.ndarray) -> None:
        n = len(self.seen)
        if len(index) and (index.min() < 0 or index.max() >= n or self.seen[index].any()
                           or len(np.unique(index)) != len(index)):
            raise DataError(f"Parquet shard {path}: row indices out of range 0..{n - 1} or repeated; "
                            "the split's shards are mixed up, write them again with `ffpipe data prepare`")
        if len(index) and (np.diff(index) == 1).all():  # a run in order (raw and test shards):
            index = slice(int(index[0]), int(index[-1]) + 1)  # no gather
        self.images[index] = images
        self.labels[index] = labels
        self.seen[index] = True


def output_shape(meta: dict, size: int, where: str) -> tuple[int, int, int]:
    c, h, w = meta["image_shape"]
    if meta["image_format"] == "raw":
        return c, h, w
    size = size or h
    if size == 0:
        raise DataError(f"the images in {where} differ in size; set data.image_size to the side "
                        "they should be resized to")
    return 3, size, size


def _decode_batch(path: str, batch: pa.RecordBatch, offsets: np.ndarray, data: np.ndarray,
                  shape: tuple[int, int, int], threads: int) -> np.ndarray:
    items = [data[offsets[i]: offsets[i + 1]].tobytes() for i in range(batch.num_rows)]
    index = batch.column("index").to_numpy()
    sources = (batch.column("source").to_pylist() if "source" in batch.schema.names
               else [""] * batch.num_rows)
    names = [f"{s} (row index {i} of shard {path})" for s, i in zip(sources, index)]
    return decode_all(items, names, shape[1], threads)


def _raw_batch(path: str, offsets: np.ndarray, data: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    per_image = math.prod(shape)
    if not (np.diff(offsets) == per_image).all():
        raise DataError(f"Parquet shard {path}: an image is not {per_image} bytes ({list(shape)} uint8); "
                        "the shard does not match its own metadata, write it again")
    return data.reshape(-1, *shape)


def _read_shard(fs: pafs.FileSystem, path: str, meta: dict, shape: tuple[int, int, int],
                target: _Target, threads: int) -> None:
    checksum, rows, raw = Checksum(), 0, meta["image_format"] == "raw"
    columns = ["image", "label", "index"] + ([] if raw else ["source"])
    try:
        with fs.open_input_file(path) as f:
            shard = pq.ParquetFile(f)
            columns = [c for c in columns if c in shard.schema_arrow.names]
            for batch in shard.iter_batches(RAW_BATCH_ROWS if raw else ENCODED_BATCH_ROWS, columns=columns):
                offsets, data = binary_values(batch.column("image"))
                labels = batch.column("label").to_numpy()
                checksum.update(data, labels)
                images = (_raw_batch(path, offsets, data, shape) if raw
                          else _decode_batch(path, batch, offsets, data, shape, threads))
                target.place(path, batch.column("index").to_numpy(), images, labels)
                rows += batch.num_rows
    except DataError:
        raise
    except ARROW_ERRORS as err:
        raise damaged_shard(path, err) from None
    check_shard(path, rows, checksum, meta["num_rows"], meta["checksum"])


def read_split(root: str, split: str, size: int = 0, threads: int = 0) -> tuple[ArraySet, dict]:
    """One split of the shards under `root` (a folder or a URI), with the split's metadata."""
    fs, base = open_root(root)
    paths = shard_paths(fs, base, split, root)
    meta = split_meta(fs, paths, split)
    where = f"{root}/{split}"
    shape = output_shape(meta, size, where)
    n = meta["num_rows"]
    target = _Target(np.empty((n, *shape), np.uint8), np.zeros(n, np.int64), np.zeros(n, bool))
    for path, shard_meta in zip(paths, meta["shards"]):
        _read_shard(fs, path, shard_meta, shape, target, threads)
    if not target.seen.all():
        raise DataError(f"the shards in {where} lack rows (first missing index "
                        f"{int(np.argmin(target.seen))}); a shard is missing, write them again")
    data = ArraySet(torch.from_numpy(target.images), torch.from_numpy(target.labels), list(meta["classes"]))
    return data.check(f"Parquet shards in {where}"), meta
