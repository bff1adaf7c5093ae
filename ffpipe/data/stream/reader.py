"""Shards of a streamed split, read ahead on a few threads in the order the stream needs them.

A shard is read whole (its image bytes, labels and sources: ~256 MB as `ffpipe data prepare`
writes them) and its checksum verified before any of its rows is handed out, so a changed or
damaged file stops the run before a model sees one of its images. A shard stays in memory while
rows of it are still to be used and is dropped after its last one: with the order of order.py,
memory holds about two windows of rows plus the shards read ahead, whatever the split's size
(and, while a training epoch ends, the next epoch's first window: loader.py's `_prepare`).
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ffpipe.data.parquet import ARROW_ERRORS, Checksum, binary_values, check_shard, damaged_shard
from ffpipe.data.stream.order import EpochOrder, shard_of
from ffpipe.data.stream.split import StreamSplit

READERS = 4  # shards read at once (never more than the store's `ahead`)


@dataclass
class ShardRows:
    path: str
    offsets: np.ndarray      # row i's bytes are data[offsets[i]:offsets[i + 1]]
    data: np.ndarray
    labels: np.ndarray
    sources: pa.Array | None
    left: int                # rows still to be used

    def blob(self, row: int) -> np.ndarray:
        return self.data[self.offsets[row]:self.offsets[row + 1]]

    def name(self, row: int) -> str:
        source = f" ({self.sources[row].as_py()})" if self.sources is not None else ""
        return f"row {row} of shard {self.path}{source}"


def read_shard(split: StreamSplit, k: int) -> ShardRows:
    """Shard k, read whole and checked against the rows and checksum it was written with."""
    info = split.shards[k]
    try:
        with split.fs.open_input_file(info.path) as f:
            shard = pq.ParquetFile(f)  # its footer, parsed once
            names = shard.schema_arrow.names
            table = shard.read(columns=[c for c in ("image", "label", "source") if c in names])
        table = table.combine_chunks()
        offsets, data = binary_values(table.column("image").chunk(0))
        labels = table.column("label").to_numpy()
    except ARROW_ERRORS as err:
        raise damaged_shard(info.path, err) from None
    checksum = Checksum()
    checksum.update(data, labels)
    check_shard(info.path, len(labels), checksum, info.rows, info.checksum)
    sources = table.column("source").chunk(0) if "source" in table.column_names else None
    return ShardRows(info.path, offsets, data, labels, sources, 0)


@dataclass
class RowNames:
    """What an error calls each row of a batch; built only for the row that needs it."""
    rows: list

    def __getitem__(self, i: int) -> str:
        shard, row = self.rows[i]
        return shard.name(row)

    def __len__(self) -> int:
        return len(self.rows)


class ShardStore:
    """The rows of `order.use_ids[used:]`: their shards read in the order they are needed by up
    to READERS threads, at most `ahead` shards beyond those in use, each dropped once its last row
    has been taken.

    One reader thread capped the stream at about 6,300 img/s of ImageNet-size JPEGs (H100,
    2026-12-05: its thread busy all the time, the decoder idle a third of it): a 256 MB shard is
    read, combined and hashed (sha256) in about 0.4 s. pyarrow and hashlib let go of the GIL for
    that work, so shards read side by side add up."""

    def __init__(self, split: StreamSplit, order: EpochOrder, used: int, ahead: int):
        self.split, self.starts = split, split.starts
        self.left = np.bincount(shard_of(order.use_ids[used:], self.starts), minlength=len(split.shards))
        self.todo = iter([int(s) for s in order.shard_order if self.left[s]])
        self.loaded: dict[int, ShardRows] = {}
        self.ahead = max(1, ahead)
        self.all_asked = False  # every shard the rows need is read or being read
        self.pool = ThreadPoolExecutor(min(READERS, self.ahead), thread_name_prefix="ffpipe-shards")
        self.reading: deque[tuple[int, Future]] = deque()  # in the order the rows need them
        self.read_s = 0.0  # the readers' time in read_shard (read, checksum) of the shards taken, summed
        self._read_more()

    def _timed_read(self, k: int) -> tuple[ShardRows, float]:
        started = time.perf_counter()
        return read_shard(self.split, k), time.perf_counter() - started

    def _read_more(self) -> None:
        while len(self.reading) < self.ahead:
            k = next(self.todo, None)
            if k is None:
                self.all_asked = True
                return
            self.reading.append((k, self.pool.submit(self._timed_read, k)))

    def _load(self, shard: int) -> ShardRows:
        while shard not in self.loaded:
            k, reading = self.reading.popleft()
            rows, seconds = reading.result()  # a damaged shard's DataError is raised here, in the consumer
            self.read_s += seconds
            rows.left = int(self.left[k])
            self.loaded[k] = rows
            self._read_more()
        return self.loaded[shard]

    def take(self, ids: np.ndarray, keep: slice) -> tuple[list, np.ndarray, "RowNames"]:
        """(image bytes, labels, names) of rows ids[keep]; every row of `ids` counts as used."""
        shards = shard_of(ids, self.starts)
        rows = ids - self.starts[shards]
        blobs, labels, names = [], [], RowNames([])
        for s, r in zip(shards[keep], rows[keep]):
            shard = self._load(int(s))
            blobs.append(shard.blob(int(r)))
            labels.append(shard.labels[r])
            names.rows.append((shard, int(r)))
        for s in shards.tolist():
            shard = self._load(s)
            shard.left -= 1
            if shard.left == 0:
                del self.loaded[s]
        return blobs, np.asarray(labels, dtype=np.int64), names

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
