"""The order a streamed split is read and used in, drawn from (seed, epoch) alone.

Reading: the split's shards in a permuted order, each from its first row to its last (one pass
over every file, no seeks). Using: the read sequence cut into windows of `window` rows, each
window shuffled. A row is used within its window, so a reader holds at most the shards that
overlap two windows (the one in use and the next, read ahead), never the split. Shards written
by `ffpipe data prepare` hold a seeded mix of classes, so shard order plus window shuffles give
batches of every class.

Everything here is a pure function of the shard sizes, the seed and the epoch: every backend and
every replica draws the same order, and a run resumed at batch b reads from the window that holds
b's first row and uses exactly the rows the uninterrupted run would have.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EpochOrder:
    shard_order: np.ndarray   # the shards in the order they are read
    read_ids: np.ndarray      # split row ids (shard's first id + row) in read order
    use_ids: np.ndarray       # the same ids in the order batches use them
    window: int

    def read_end(self, used: int) -> int:
        """How many rows of the read sequence must be read before the first `used` rows of the
        use order are all there: the end of the window holding row `used - 1`."""
        if used <= 0:
            return 0
        return min(len(self.read_ids), -(-used // self.window) * self.window)

    def read_start(self, used: int) -> int:
        """Where reading starts for a stream that resumes after `used` rows: its window's start."""
        return (used // self.window) * self.window


def shard_starts(rows_per_shard: list[int]) -> np.ndarray:
    """Each shard's first split row id, and the total at the end (len = shards + 1)."""
    return np.concatenate([[0], np.cumsum(np.asarray(rows_per_shard, dtype=np.int64))])


def epoch_order(rows_per_shard: list[int], seed: int, epoch: int, window: int,
                shuffle: bool = True, keep: np.ndarray | None = None) -> EpochOrder:
    """The epoch's read and use orders; `shuffle` False: shards and rows in stored order
    (evaluation); `keep`: which of the split's rows are in the stream (a bool mask: a training
    subset, or the training or validation part), the others skipped."""
    starts = shard_starts(rows_per_shard)
    if not shuffle:
        ids = np.arange(int(starts[-1]), dtype=np.int64)
        ids = ids if keep is None else ids[keep]
        return EpochOrder(np.arange(len(rows_per_shard)), ids, ids, max(1, min(window, len(ids))))
    rng = np.random.Generator(np.random.PCG64([seed, epoch, 0x5EED]))
    shard_order = rng.permutation(len(rows_per_shard))
    read_ids = np.concatenate([np.arange(starts[s], starts[s + 1], dtype=np.int64) for s in shard_order])
    if keep is not None:
        read_ids = read_ids[keep[read_ids]]
    n = len(read_ids)
    window = max(1, min(window, n))
    use_ids = read_ids.copy()
    for lo in range(0, n, window):
        hi = min(lo + window, n)
        use_ids[lo:hi] = read_ids[lo:hi][rng.permutation(hi - lo)]
    return EpochOrder(shard_order, read_ids, use_ids, window)


def shard_of(ids: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The shard of each split row id."""
    return np.searchsorted(starts, ids, side="right") - 1
