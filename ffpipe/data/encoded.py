"""Encoded splits (image folders, Parquet files of JPEG/PNG bytes) written as shards cut by size.

A split here is anything with the methods FileSplit has for it (ffpipe/data/folders.py; also
ParquetSplit in ffpipe/data/image_parquet.py): labels, names() for errors, relative() for the
source column, nbytes(), sizes(threads), pieces() (the units the input reads at random: a file, a
row group) and read(rows) (the encoded bytes of those rows, in that order).

The training split is written in a seeded order: its pieces shuffled, then the rows inside every
shard, so each shard mixes classes (a folder lists its files class by class, and a streaming
reader shuffles only shards and a bounded buffer). The test split keeps its order. Every row's
`index` is its place in the source order, so a reader that places rows by index gets that back.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from ffpipe.data.decode import decode_all
from ffpipe.data.loader import ChannelSums
from ffpipe.data.parquet import shard_places, write_shard

STATS_IMAGES = 2000  # training images decoded for the manifest's mean and std
STATS_SIDE = 224     # their side when the images differ in size


@dataclass
class ShardLimits:
    bytes: int     # a shard closes once its image bytes reach this
    rows: int = 0  # ... or once it holds this many rows (0: by size only)


def cut(nbytes: np.ndarray, limits: ShardLimits) -> list[slice]:
    """The runs of consecutive rows (of images with these sizes, in this order) that make shards."""
    ends = np.cumsum(nbytes)
    runs, start, n = [], 0, len(nbytes)
    while start < n:
        before = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, before + limits.bytes, side="left")) + 1  # the row reaching it
        stop = min(stop, start + limits.rows) if limits.rows else stop
        runs.append(slice(start, min(stop, n)))
        start = runs[-1].stop
    return runs


def training_order(pieces: np.ndarray, nbytes: np.ndarray, limits: ShardLimits,
                   seed: int) -> tuple[np.ndarray, list[slice]]:
    """(rows in writing order, the shard runs over it): pieces in a seeded order, each piece's
    rows together (one read of it), then the rows of every shard shuffled."""
    rng = np.random.default_rng(seed)
    _, piece = np.unique(pieces, return_inverse=True)
    rank = rng.permutation(piece.max() + 1 if len(piece) else 0)[piece]
    order = np.lexsort((np.arange(len(pieces)), rank))
    runs = cut(nbytes[order], limits)
    for run in runs:
        order[run] = rng.permutation(order[run])
    return order, runs


class SampledStats:
    """Per-channel mean and std (in [0, 1] units) of a seeded sample of up to STATS_IMAGES
    training images, decoded at `side` as their shard is written: no second read of the input."""

    def __init__(self, n: int, side: int, seed: int, threads: int):
        self.chosen = np.zeros(n, dtype=bool)
        self.chosen[np.random.default_rng(seed).choice(n, min(n, STATS_IMAGES), replace=False)] = True
        self.side, self.threads = side or STATS_SIDE, threads
        self.sums = ChannelSums(3)

    def add(self, rows: np.ndarray, blobs: list[bytes], names: list[str]) -> None:
        picked = np.flatnonzero(self.chosen[rows]).tolist()
        if picked:
            images = decode_all([blobs[i] for i in picked], [names[rows[i]] for i in picked],
                                self.side, self.threads)
            self.sums.add(torch.from_numpy(images))

    def result(self) -> dict:
        mean, std = self.sums.stats()
        return {"mean": mean, "std": std, "stats_images": int(self.chosen.sum())}


def write_encoded_split(fs, folder: str, meta: dict, split, sizes_N2: np.ndarray, limits: ShardLimits,
                        seed: int | None, stats: SampledStats | None = None) -> list[dict]:
    """Write `split` (seed: shuffle it as the training split; None: keep its order); one shard's
    bytes in memory at a time. Returns the manifest entry of each shard."""
    nbytes = split.nbytes()
    if seed is None:
        order, runs = np.arange(len(nbytes)), cut(nbytes, limits)
    else:
        order, runs = training_order(split.pieces(), nbytes, limits, seed)
    labels, sources, names = split.labels.numpy(), split.relative(), split.names()
    entries = []
    for path, relative, run, shard_meta in shard_places(folder, runs, meta):
        rows = order[run]
        blobs = split.read(rows)
        if stats is not None:
            stats.add(rows, blobs, names)
        extra = {"source": pa.array([sources[i] for i in rows.tolist()], pa.string()),
                 "height": pa.array(sizes_N2[rows, 0], pa.int32()),
                 "width": pa.array(sizes_N2[rows, 1], pa.int32())}
        entry = write_shard(fs, path, pa.array(blobs, pa.large_binary()), labels[rows], rows,
                            shard_meta, extra)
        entries.append({"path": relative, **entry})
    return entries
