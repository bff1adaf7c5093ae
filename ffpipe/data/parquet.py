"""Parquet shards: ROOT/<split>/shard-NNNNN.parquet, on a local disk or any filesystem pyarrow
knows (s3://, gs://, hdfs://, file://), and ROOT/manifest.json listing them.

Columns: image (large_binary: raw uint8 C*H*W bytes, or the original JPEG/PNG file), label (int64),
index (int64: the row's place in the split as read from the source), and for encoded images source
(where the row came from: the file's path under the dataset folder, or FILE#row) and height, width
(int32, from the image's header; format_version 2, absent from older shards). The schema metadata
key b"ffpipe" holds JSON: format_version (1 raw, 2 encoded), dataset, classes, image_shape,
image_format ("raw" | "encoded"), split, num_rows, checksum, and the shard's place: shard (k),
num_shards, split_rows (so a missing shard is noticed).

checksum = sha256( sha256(image bytes of every row, in row order) || sha256(labels as int64 LE) ):
two running hashes, so a reader checks a shard while streaming it batch by batch.

manifest.json (written last, so it exists only for a complete prepare): format_version 2, dataset,
classes, image_format, image_shape ([3, 0, 0] when encoded sizes vary), mean and std (per channel,
in [0, 1] units, of the training split or a seeded sample of it), stats_images (how many images
they come from), and splits: {name: {num_rows, bytes, shards: [{path (relative to ROOT), rows,
bytes (the file's size), checksum}]}}.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ffpipe.errors import DataError

META_KEY = b"ffpipe"
FORMAT_VERSION = 2  # the newest shard and manifest format this code reads and writes
MANIFEST = "manifest.json"
SHARD_BATCH_ROWS = 2048  # rows per streamed batch: bounds the reader's memory beyond the output
ARROW_ERRORS = (pa.ArrowException, OSError, ValueError, KeyError, json.JSONDecodeError)


@contextmanager
def storage_errors(what: str):
    """pyarrow's and the filesystem's errors inside the block as one DataError: `what` (which
    names the file or folder), then the cause; a DataError raised inside passes unchanged."""
    try:
        yield
    except DataError:
        raise
    except ARROW_ERRORS as err:
        raise DataError(f"{what}: {type(err).__name__}: {err}") from None


class Checksum:
    def __init__(self):
        self.images, self.labels = hashlib.sha256(), hashlib.sha256()

    def update(self, image_bytes: np.ndarray, labels: np.ndarray) -> None:
        self.images.update(memoryview(np.ascontiguousarray(image_bytes)))
        self.labels.update(labels.astype("<i8").tobytes())

    def hexdigest(self) -> str:
        return hashlib.sha256(self.images.digest() + self.labels.digest()).hexdigest()


def damaged_shard(path: str, err: Exception) -> DataError:
    return DataError(f"Parquet shard {path} is damaged or truncated ({type(err).__name__}: {err}); "
                     "write it again with `ffpipe data prepare`")


def check_shard(path: str, rows: int, checksum: Checksum, meta_rows: int, meta_checksum: str) -> None:
    """A shard read whole must have the rows and checksum it was written with."""
    if rows != meta_rows or checksum.hexdigest() != meta_checksum:
        raise DataError(f"Parquet shard {path} fails its checksum ({rows} rows read, {meta_rows} "
                        "written): the file was changed or damaged; write the shards again with "
                        "`ffpipe data prepare`")


def open_root(root: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and base path of a local folder or of a URI pyarrow understands."""
    if "://" in root:
        try:
            return pafs.FileSystem.from_uri(root)
        except ARROW_ERRORS as err:
            raise DataError(f"cannot open shard location {root}: {err}") from None
    return pafs.LocalFileSystem(), Path(root).expanduser().resolve().as_posix()


def binary_values(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, bytes) of a large_binary column without copying: row i is bytes[o[i]:o[i+1]]."""
    if column.null_count:
        raise ValueError("the image column has empty (null) rows")
    _, offsets_buf, data_buf = column.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[column.offset: column.offset + len(column) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.empty(0, np.uint8)
    return offsets - offsets[0], data[offsets[0]: offsets[-1]]


def raw_column(images_NCHW: np.ndarray) -> pa.Array:
    """A large_binary column over uint8 images, one row per image, without a Python loop."""
    n = len(images_NCHW)
    flat = np.ascontiguousarray(images_NCHW).reshape(n, -1)
    offsets = np.arange(n + 1, dtype=np.int64) * flat.shape[1]
    return pa.Array.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(flat)])


def write_shard(fs: pafs.FileSystem, path: str, images: pa.Array, labels: np.ndarray,
                index: np.ndarray, meta: dict, extra: dict[str, pa.Array] | None = None) -> dict:
    """Write one shard (`extra`: more columns, e.g. source, height, width); returns its rows,
    bytes (the file's size) and checksum."""
    checksum = Checksum()
    checksum.update(binary_values(images)[1], labels)
    columns = {"image": images, "label": pa.array(labels, pa.int64()), "index": pa.array(index, pa.int64()),
               **(extra or {})}
    meta = {**meta, "num_rows": len(labels), "checksum": checksum.hexdigest()}
    table = pa.table(columns).replace_schema_metadata({META_KEY: json.dumps(meta)})
    with fs.open_output_stream(path) as f:
        # Dictionary-encoding unique image blobs only costs time; labels repeat, so they gain.
        # JPEG/PNG bytes do not compress: zstd over them made writing 3.5x slower for nothing.
        codecs = {name: "zstd" for name in table.column_names}
        if meta.get("image_format") == "encoded":
            codecs["image"] = "none"
        pq.write_table(table, f, compression=codecs, use_dictionary=["label"])
        size = f.tell()
    return {"rows": len(labels), "bytes": size, "checksum": meta["checksum"]}


def write_manifest(fs: pafs.FileSystem, base: str, manifest: dict) -> str:
    """ROOT/manifest.json, written under a temporary name and then moved into place."""
    path = f"{base.rstrip('/')}/{MANIFEST}"
    with fs.open_output_stream(path + ".tmp") as f:
        f.write(json.dumps(manifest, indent=1).encode() + b"\n")
    fs.move(path + ".tmp", path)
    return path


def read_manifest(root: str) -> dict | None:
    """ROOT/manifest.json (`root`: a folder or a URI), None when there is none; refused when it is
    malformed or a shard it lists is missing or has another size."""
    fs, base = open_root(root)
    path = f"{base.rstrip('/')}/{MANIFEST}"
    try:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        with fs.open_input_stream(path) as f:
            manifest = json.loads(f.read())
        shards = _manifest_shards(manifest)
        infos = fs.get_file_info([f"{base.rstrip('/')}/{s['path']}" for s in shards])
    except (*ARROW_ERRORS, TypeError) as err:
        raise DataError(f"manifest {path} is malformed ({type(err).__name__}: {err}); write the "
                        "shards and manifest again with `ffpipe data prepare`") from None
    for shard, info in zip(shards, infos):
        if info.type != pafs.FileType.File or info.size != shard["bytes"]:
            what = "missing" if info.type == pafs.FileType.NotFound else f"{info.size} bytes, not {shard['bytes']}"
            raise DataError(f"manifest {path} lists shard {info.path}, which is {what}; copy the "
                            "shards again or write them again with `ffpipe data prepare`")
    return manifest


def _manifest_shards(manifest: dict) -> list[dict]:
    """Every shard entry of a manifest, its keys checked (a KeyError names a missing one)."""
    if not 1 <= manifest["format_version"] <= FORMAT_VERSION:
        raise ValueError(f"format_version {manifest['format_version']} is not 1..{FORMAT_VERSION} "
                         "(a newer ffpipe wrote it?)")
    for key in ("dataset", "classes", "image_format", "image_shape", "mean", "std", "stats_images"):
        manifest[key]  # noqa: B018 - a KeyError names a missing entry
    shards = []
    for name, split in manifest["splits"].items():
        entries = [{k: s[k] for k in ("path", "rows", "bytes", "checksum")} for s in split["shards"]]
        if sum(s["rows"] for s in entries) != split["num_rows"]:
            raise ValueError(f"the shards of split '{name}' do not add up to its num_rows")
        shards += entries
    return shards


def shard_places(folder: str, runs: list[slice], meta: dict):
    """(path, path relative to ROOT, run, metadata) of each shard of a split cut into `runs`
    (consecutive slices covering its rows)."""
    n = runs[-1].stop if runs else 0
    for k, run in enumerate(runs):
        name = f"shard-{k:05d}.parquet"
        yield (f"{folder}/{name}", f"{meta['split']}/{name}", run,
               {**meta, "shard": k, "num_shards": len(runs), "split_rows": n})


def shard_paths(fs: pafs.FileSystem, base: str, split: str, root: str) -> list[str]:
    folder = f"{base.rstrip('/')}/{split}"
    try:
        infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    except ARROW_ERRORS as err:
        raise DataError(f"cannot list shards in {folder}: {err}") from None
    paths = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if not paths:
        raise DataError(f"no Parquet shards of the '{split}' split in {folder}; write them with "
                        f"`ffpipe data prepare --dataset NAME --out {root}`")
    return paths


def read_meta(fs: pafs.FileSystem, path: str) -> dict:
    """A shard's ffpipe metadata, read from its footer only."""
    try:
        with fs.open_input_file(path) as f:
            raw = pq.read_schema(f).metadata or {}
        meta = json.loads(raw[META_KEY])
        if meta.get("format_version", 1) > FORMAT_VERSION:
            raise ValueError(f"format_version {meta['format_version']} is newer than this ffpipe reads")
        for key in ("dataset", "classes", "image_shape", "image_format", "split", "num_rows", "checksum",
                    "shard", "num_shards", "split_rows"):
            meta[key]  # noqa: B018 - a KeyError names a missing entry
        return meta
    except ARROW_ERRORS as err:
        raise DataError(f"Parquet shard {path} cannot be read or has no ffpipe metadata "
                        f"({type(err).__name__}: {err}); write it again with `ffpipe data prepare`"
                        ) from None


def split_meta(fs: pafs.FileSystem, paths: list[str], split: str) -> dict:
    """The metadata all shards of a split share (plus their total row count); they must agree."""
    metas = [read_meta(fs, p) for p in paths]
    first = metas[0]
    for path, meta in zip(paths, metas):
        if meta["split"] != split:
            raise DataError(f"shard {path} holds split '{meta['split']}' but lies in the '{split}' folder")
        for key in ("dataset", "classes", "image_shape", "image_format", "num_shards", "split_rows"):
            if meta[key] != first[key]:
                raise DataError(f"shard {path} has {key} = {meta[key]!r} but {paths[0]} has "
                                f"{first[key]!r}; a split's shards must come from one `ffpipe data prepare`")
    missing = sorted(set(range(first["num_shards"])) - {m["shard"] for m in metas})
    if missing or len(metas) != first["num_shards"]:
        raise DataError(f"the '{split}' split was written as {first['num_shards']} shards but "
                        f"{len(metas)} are there (missing: {missing or 'none; some are doubled'}); "
                        "copy the missing shards or write them again with `ffpipe data prepare`")
    return {**first, "num_rows": first["split_rows"], "shards": metas}
