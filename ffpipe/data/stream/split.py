"""A split of encoded Parquet shards as a stream reads it: where each shard is, its rows and
checksum, and what the model needs to know (classes, image side, channel statistics), all from the
shards' manifest or footers; no image is read."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs

from ffpipe.data.parquet import open_root, read_manifest, shard_paths, split_meta
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
    where: str
    shards: list[ShardInfo]
    classes: list[str]
    side: int
    dataset: str

    def __post_init__(self):
        self.starts = shard_starts([s.rows for s in self.shards])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, int, int]:
        return 3, self.side, self.side

    @property
    def rows_per_shard(self) -> list[int]:
        return [s.rows for s in self.shards]

    def mean_shard_rows(self) -> float:
        return float(np.mean(self.rows_per_shard))


def _from_manifest(manifest: dict, base: str, split: str) -> list[ShardInfo]:
    return [ShardInfo(f"{base.rstrip('/')}/{s['path']}", s["rows"], s["checksum"])
            for s in manifest["splits"][split]["shards"]]


def _from_footers(fs, base: str, root: str, split: str) -> tuple[list[ShardInfo], dict]:
    paths = shard_paths(fs, base, split, root)
    meta = split_meta(fs, paths, split)
    return [ShardInfo(p, m["num_rows"], m["checksum"]) for p, m in zip(paths, meta["shards"])], meta


def open_split(root: str, split: str, side: int) -> tuple[StreamSplit, dict]:
    """The split `split` of the shards under `root` (a folder or a URI) and the shards' shared
    metadata (the manifest's where there is one: it has the channel statistics; else the
    footers'); `side`: the crops' side (0: the side the shards record, else DEFAULT_SIDE)."""
    fs, base = open_root(root)
    manifest = read_manifest(root)
    if manifest is not None and split in manifest["splits"]:
        meta, shards = manifest, _from_manifest(manifest, base, split)
    else:
        shards, meta = _from_footers(fs, base, root, split)
    if meta["image_format"] != "encoded":
        raise DataError(f"the shards in {root}/{split} hold raw pixels, which are read into memory "
                        "whole; data.stream is for JPEG/PNG shards (image folders): set "
                        "data.stream = 'off'")
    side = side or meta["image_shape"][1] or DEFAULT_SIDE
    return StreamSplit(fs, f"{root}/{split}", shards, list(meta["classes"]), side, meta["dataset"]), meta
