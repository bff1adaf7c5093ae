"""A split of encoded Parquet shards as a stream reads it: where each shard is, its rows and
checksum, and what the model needs to know (classes, image side, channel statistics), all from the
shards' manifest or footers; no image is read."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ffpipe.data.parquet import ARROW_ERRORS, damaged_shard, open_root, shard_paths, split_meta
from ffpipe.data.stream.order import shard_starts
from ffpipe.errors import DataError

DEFAULT_SIDE = 224  # of streamed crops when neither data.image_size nor the shards give one


@dataclass(frozen=True)
class ShardInfo:
    path: str
    rows: int
    checksum: str


@dataclass
class StreamSplit:
    """What stands in a DataBundle for a split read as a stream (an ArraySet's questions answered)."""
    fs: pafs.FileSystem
    shards: list[ShardInfo]
    classes: list[str]
    side: int
    dataset: str
    keep: np.ndarray | None = None  # which rows the stream uses (bool, one per row); None: all

    def __post_init__(self):
        self.starts = shard_starts(self.rows_per_shard)

    def __len__(self) -> int:
        return int(self.starts[-1]) if self.keep is None else int(self.keep.sum())

    def source_order(self) -> tuple[np.ndarray, np.ndarray]:
        """(the rows in the order the source listed them, their labels in that order): from the
        label and index columns only (a few bytes a row), so subsets can be drawn as an
        in-memory read of the same shards draws them."""
        labels, index = [], []
        for info in self.shards:
            try:
                with self.fs.open_input_file(info.path) as f:
                    table = pq.read_table(f, columns=["label", "index"])
            except ARROW_ERRORS as err:
                raise damaged_shard(info.path, err) from None
            labels.append(table.column("label").to_numpy())
            index.append(table.column("index").to_numpy())
        rows = np.argsort(np.concatenate(index), kind="stable")
        return rows, np.concatenate(labels).astype(np.int64)[rows]

    def select(self, rows: np.ndarray) -> "StreamSplit":
        """The same shards, streaming only `rows` (indices into the whole split)."""
        keep = np.zeros(int(self.starts[-1]), dtype=bool)
        keep[rows] = True
        return dataclasses.replace(self, keep=keep)

    @property
    def shape(self) -> tuple[int, int, int]:
        return 3, self.side, self.side

    @property
    def rows_per_shard(self) -> list[int]:
        return [s.rows for s in self.shards]

    def mean_shard_rows(self) -> float:
        """Rows a shard gives the stream, on average (of those it keeps)."""
        return max(1.0, len(self) / len(self.shards))


def _from_manifest(manifest: dict, base: str, split: str) -> list[ShardInfo]:
    return [ShardInfo(f"{base.rstrip('/')}/{s['path']}", s["rows"], s["checksum"])
            for s in manifest["splits"][split]["shards"]]


def _from_footers(fs, base: str, root: str, split: str) -> tuple[list[ShardInfo], dict]:
    paths = shard_paths(fs, base, split, root)
    meta = split_meta(fs, paths, split)
    return [ShardInfo(p, m["num_rows"], m["checksum"]) for p, m in zip(paths, meta["shards"])], meta


def open_split(root: str, split: str, side: int, manifest: dict | None) -> tuple[StreamSplit, dict]:
    """The split `split` of the shards under `root` (a folder or a URI) and the shards' shared
    metadata (`manifest`, read_manifest's, where there is one: it has the channel statistics;
    else the footers'); `side`: the crops' side (0: the side the shards record, else DEFAULT_SIDE)."""
    fs, base = open_root(root)
    if manifest is not None and split in manifest["splits"]:
        meta, shards = manifest, _from_manifest(manifest, base, split)
    else:
        shards, meta = _from_footers(fs, base, root, split)
    if meta["image_format"] != "encoded":
        raise DataError(f"the shards in {root}/{split} hold raw pixels, which are read into memory "
                        "whole; data.stream is for JPEG/PNG shards (image folders): set "
                        "data.stream = 'off'")
    side = side or meta["image_shape"][1] or DEFAULT_SIDE
    return StreamSplit(fs, shards, list(meta["classes"]), side, meta["dataset"]), meta
