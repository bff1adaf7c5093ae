"""Shards of a streamed split, read ahead on a thread in the order the stream needs them.

A shard is read whole (its image bytes, labels and sources: ~256 MB as `ffpipe data prepare`
writes them) and its checksum verified before any of its rows is handed out, so a changed or
damaged file stops the run before a model sees one of its images. A shard stays in memory while
rows of it are still to be used and is dropped after its last one: with the order of order.py,
memory holds about two windows of rows plus the shards read ahead, whatever the split's size.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ffpipe.data.parquet import ARROW_ERRORS, Checksum, binary_values, check_shard, damaged_shard
from ffpipe.data.stream.order import EpochOrder, shard_of
from ffpipe.data.stream.split import StreamSplit


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
    """The rows of `order.use_ids[used:]`: their shards read by a thread, at most `ahead` shards
    beyond those in use, and dropped once their last row has been taken."""

    def __init__(self, split: StreamSplit, order: EpochOrder, used: int, ahead: int):
        self.split, self.starts = split, split.starts
        self.left = np.bincount(shard_of(order.use_ids[used:], self.starts), minlength=len(split.shards))
        self.todo = [int(s) for s in order.shard_order if self.left[s]]
        self.loaded: dict[int, ShardRows] = {}
        self.ready: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self.stopping = threading.Event()
        self.read_s = 0.0  # the reader thread's time in read_shard (read, checksum)
        self.thread = threading.Thread(target=self._read_all, name="ffpipe-shards", daemon=True)
        self.thread.start()

    def _read_all(self) -> None:
        for k in self.todo:
            started = time.perf_counter()
            try:
                item = (k, read_shard(self.split, k))
            except Exception as err:  # handed to the consumer, which raises it in its own thread
                item = (k, err)
            self.read_s += time.perf_counter() - started
            while not self.stopping.is_set():
                try:
                    self.ready.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self.stopping.is_set() or isinstance(item[1], Exception):
                return

    def _load(self, shard: int) -> ShardRows:
        while shard not in self.loaded:
            k, rows = self.ready.get()
            if isinstance(rows, Exception):
                raise rows
            rows.left = int(self.left[k])
            self.loaded[k] = rows
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
        self.stopping.set()
        self.thread.join()
