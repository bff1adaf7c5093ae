"""Parquet files of encoded images, as the Hugging Face `datasets` library writes them: an input
of `ffpipe data prepare --dataset image_parquet --root DIR` (not a data.name for training).

Columns: image (struct{bytes: binary, path: string}, or plain binary) and label (integer).
Splits: a file whose name starts with train / test (or validation / val, read as test), or that
lies under a folder of one of those names: DIR/train-00000-of-00002.parquet,
DIR/data/test-00000-of-00001.parquet, DIR/default/train/0000.parquet. Without test files,
data.test_fraction of each class is held out by data.split_seed, as for image folders. Class
names come from the schema metadata `datasets` writes (b"huggingface": info.features.label.names),
else they are "0".."K-1" for the largest label K-1.

The files are read batch by batch, twice: once to check every row (a non-empty image that opens,
a label in range) and note its label, size and place; then, when shards are written, only the
row groups that hold a shard's rows. A row group is the unit read at random, so the training
order shuffles row groups, then the rows inside each shard (ffpipe/data/encoded.py): classes mix
as well as the groups are small (`datasets` writes 100 images per group).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ffpipe.data.decode import image_sizes
from ffpipe.data.parquet import storage_errors
from ffpipe.data.subset import held_out_per_class
from ffpipe.errors import DataError

SCAN_ROWS = 256  # rows per batch read from the input: bounds memory to a few batches of images
FOLDER_SPLITS = {"train": "train", "test": "test", "validation": "val", "val": "val"}
LAYOUT = ("an `image` column (struct{bytes, path} as Hugging Face datasets write it, or binary) "
          "and an integer `label` column")


@dataclass
class ParquetSplit:
    """A split's rows, where they are in the input files and what the first read found."""
    files: list[Path]
    file_of: np.ndarray   # int32 N: the row's file (index into files)
    row_of: np.ndarray    # int64 N: its row in that file
    group_of: np.ndarray  # int64 N: its row group, numbered over all files (the unit read at random)
    labels: torch.Tensor  # int64 N
    classes: list[str]
    sources: list[str]    # the image's own path where the input has one, else FILE#row
    hw: np.ndarray        # int32 N x 2: height, width from the header
    lengths: np.ndarray   # int64 N: encoded bytes

    def names(self) -> list[str]:
        return [f"{self.files[f]}#{r}" for f, r in zip(self.file_of.tolist(), self.row_of.tolist())]

    def relative(self) -> list[str]:
        return self.sources

    def take(self, index: torch.Tensor) -> "ParquetSplit":
        i = index.numpy()
        return replace(self, file_of=self.file_of[i], row_of=self.row_of[i], group_of=self.group_of[i],
                       labels=self.labels[index], sources=[self.sources[k] for k in i.tolist()],
                       hw=self.hw[i], lengths=self.lengths[i])

    def nbytes(self) -> np.ndarray:
        return self.lengths

    def sizes(self, threads: int) -> np.ndarray:
        return self.hw

    def pieces(self) -> np.ndarray:
        return self.group_of

    def read(self, rows: np.ndarray) -> list[bytes]:
        """The encoded bytes of these rows, in this order: per file, only the row groups holding them."""
        out: list = [None] * len(rows)
        files = self.file_of[rows]
        for f in np.unique(files).tolist():
            at = np.flatnonzero(files == f)
            for k, blob in zip(at.tolist(), _read_rows(self.files[f], self.row_of[rows[at]])):
                out[k] = blob
        return out


def _split_of(relative: Path) -> str | None:
    name = relative.name.lower()
    word = next((w for w in ("train", "test", "val") if name.startswith(w)), None)
    folders = (FOLDER_SPLITS.get(p.lower()) for p in reversed(relative.parts[:-1]))
    return word or next((s for s in folders if s), None)


def split_files(root: Path) -> dict[str, list[Path]]:
    """{"train": files, "test": files (validation's where there is no test)} of a folder."""
    if not root.is_dir():
        raise DataError(f"Parquet folder {root} does not exist; pass --root DIR, a folder of Parquet "
                        "files (train-*.parquet, test-*.parquet)")
    found: dict[str | None, list[Path]] = {}
    for path in sorted(root.rglob("*.parquet")):
        found.setdefault(_split_of(path.relative_to(root)), []).append(path)
    if None in found:
        raise DataError(f"{found[None][0]} belongs to no split: a file's name, or a folder above it, "
                        "must start with train, test, validation or val; rename or move it")
    if not found.get("train"):
        raise DataError(f"{root} holds no training files: name them train-*.parquet or put them in "
                        "a train/ folder")
    return {"train": found["train"], "test": found.get("test") or found.get("val", [])}


def class_names(path: Path) -> list[str] | None:
    """The label names the Hugging Face metadata of a file gives, if any."""
    with _open(path) as parquet:
        meta = parquet.schema_arrow.metadata or {}
    try:
        names = json.loads(meta[b"huggingface"])["info"]["features"]["label"]["names"]
    except (KeyError, TypeError, ValueError):
        return None
    return [str(n) for n in names] if isinstance(names, list) and names else None


def _image_bytes(column: pa.Array) -> tuple[pa.Array, list | None]:
    """(the bytes, the paths or None) of an image column; a null struct counts as null bytes."""
    if not pa.types.is_struct(column.type):
        return column, None
    paths = pc.struct_field(column, "path").to_pylist() if column.type.get_field_index("path") >= 0 else None
    return pc.struct_field(column, "bytes"), paths


def _check_schema(path: Path, schema: pa.Schema) -> None:
    image = schema.field("image").type if "image" in schema.names else pa.null()
    if pa.types.is_struct(image) and image.get_field_index("bytes") >= 0:
        image = image.field("bytes").type
    label = schema.field("label").type if "label" in schema.names else None
    if not ((pa.types.is_binary(image) or pa.types.is_large_binary(image))
            and label is not None and pa.types.is_integer(label)):
        raise DataError(f"{path} has columns {schema.names} ({schema.types}); image_parquet needs {LAYOUT}")


def _row_error(path: Path, row: int, what: str) -> DataError:
    return DataError(f"{path} row {row}: {what}; remove or fix that row")


def _scan_batch(path: Path, relative: str, batch: pa.RecordBatch, start: int, num_classes: int,
                threads: int) -> tuple:
    """(labels, hw, lengths, sources) of one batch of rows start, start+1, ...; checked."""
    data, paths = _image_bytes(batch.column("image"))
    lengths = pc.fill_null(pc.binary_length(data), 0).to_numpy().astype(np.int64)
    if (lengths == 0).any():
        raise _row_error(path, start + int(np.argmin(lengths)), "the image is empty")
    labels = batch.column("label")
    if labels.null_count:
        raise _row_error(path, start + labels.is_null().to_numpy(zero_copy_only=False).argmax(), "no label")
    labels = labels.to_numpy().astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= (num_classes or np.iinfo(np.int64).max)))
    if len(bad):
        allowed = (f"0..{num_classes - 1} (the file's metadata names {num_classes} classes)"
                   if num_classes else "0 or more")
        raise _row_error(path, start + int(bad[0]), f"label {labels[bad[0]]} is outside {allowed}")
    rows = range(start, start + batch.num_rows)
    hw = image_sizes(data.to_pylist(), [f"{path}#{r}" for r in rows], threads)
    sources = [p or f"{relative}#{r}" for p, r in zip(paths or [None] * len(rows), rows)]
    return labels, hw, lengths, sources


def _group_starts(parquet: pq.ParquetFile) -> np.ndarray:
    md = parquet.metadata
    return np.cumsum([0] + [md.row_group(g).num_rows for g in range(md.num_row_groups)])


def _open(path: Path) -> pq.ParquetFile:
    with storage_errors(f"cannot read Parquet file {path}"):
        return pq.ParquetFile(path)


def _scan_file(path: Path, root: Path, num_classes: int, threads: int) -> tuple[list, np.ndarray]:
    """(the batches' scans, each row's row group in the file) of one input file."""
    with storage_errors(f"cannot read Parquet file {path}"), _open(path) as parquet:
        _check_schema(path, parquet.schema_arrow)
        parts, start = [], 0
        for batch in parquet.iter_batches(SCAN_ROWS, columns=["image", "label"]):
            parts.append(_scan_batch(path, path.relative_to(root).as_posix(), batch, start,
                                     num_classes, threads))
            start += batch.num_rows
        groups = np.searchsorted(_group_starts(parquet), np.arange(start), side="right") - 1
    return parts, groups


def _scan(files: list[Path], root: Path, classes: list[str] | None, threads: int) -> ParquetSplit:
    parts, places, groups_before = [], [], 0
    for f, path in enumerate(files):
        scanned, groups = _scan_file(path, root, len(classes or ()), threads)
        parts += scanned
        places.append((np.full(len(groups), f, np.int32), np.arange(len(groups)), groups + groups_before))
        groups_before += int(groups.max()) + 1 if len(groups) else 0
    if not parts:
        raise DataError(f"the Parquet files {files[0]} ... hold no rows")
    labels, hw, lengths, sources = zip(*parts)
    file_of, row_of, group_of = (np.concatenate(p) for p in zip(*places))
    return ParquetSplit(files, file_of, row_of, group_of, torch.from_numpy(np.concatenate(labels)),
                        classes or [], [s for part in sources for s in part], np.concatenate(hw),
                        np.concatenate(lengths))


def _read_rows(path: Path, wanted: np.ndarray) -> list[bytes]:
    """The image bytes of these rows of one file, in this order, read row group by row group."""
    where = {r: k for k, r in enumerate(wanted.tolist())}
    out: list = [None] * len(wanted)
    with storage_errors(f"cannot read Parquet file {path}"), _open(path) as parquet:
        starts = _group_starts(parquet)
        groups = np.unique(np.searchsorted(starts, wanted, side="right") - 1).tolist()
        positions = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in groups]).tolist()
        done = 0
        for batch in parquet.iter_batches(SCAN_ROWS, row_groups=groups, columns=["image"]):
            data = _image_bytes(batch.column("image"))[0]
            for i, row in enumerate(positions[done: done + batch.num_rows]):
                if row in where:
                    out[where[row]] = data[i].as_py()
            done += batch.num_rows
    if any(b is None for b in out):
        raise DataError(f"{path} changed while its shards were being written; prepare them again")
    return out


def parquet_splits(root: Path, test_fraction: float, split_seed: int,
                   threads: int = 0) -> tuple[ParquetSplit, ParquetSplit]:
    """(train, test) of a folder of Hugging Face-style Parquet files (the module docstring)."""
    files = split_files(root)
    names = class_names(files["train"][0])
    train = _scan(files["train"], root, names, threads)
    test = _scan(files["test"], root, names, threads) if files["test"] else None
    if names is None:
        top = max(int(s.labels.max()) for s in (train, test) if s is not None)
        train.classes = [str(k) for k in range(top + 1)]
    if test is None:
        kept, held = held_out_per_class(train.labels, train.classes, test_fraction, split_seed,
                                        "data.test_fraction")
        return train.take(kept), train.take(held)
    return train, replace(test, classes=train.classes)
