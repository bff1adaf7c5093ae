"""Where a run's files live: a folder on this machine, or one on any filesystem pyarrow opens
(`file:///shared/runs`, `s3://bucket/runs`, `gs://bucket/runs`, `hdfs://namenode:8020/runs`).

A Store is a location (a path or a URI, a small picklable string) and the few operations a run
needs. Every write is whole or absent: the bytes go to a temporary name, then one rename gives
them their final name (on a local disk the file is flushed to disk first; on an object store the
rename is a server-side copy), so a reader never sees half a checkpoint or half a summary, and a
writer killed midway leaves the previous version in place. Appends (history.jsonl, failures.jsonl)
are real appends where the filesystem has them, else the object is rewritten whole.

Each process opens the filesystem itself (from the URI, with that node's credentials), once per
bucket or host.
"""
from __future__ import annotations

import os
import posixpath
import re
import uuid
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Callable
from urllib.parse import urlsplit

from ffpipe.errors import FFPipeError


def is_uri(location: str) -> bool:
    return "://" in str(location)


def join(location: str, name: str) -> str:
    """`name` inside `location` (a path or a URI)."""
    if is_uri(location):
        return f"{str(location).rstrip('/')}/{name}"
    return str(Path(location) / name)


def is_temporary(name: str) -> bool:
    """A file Store.write was still writing (its writer was killed, or is at work)."""
    return re.search(r"\.tmp-[0-9a-f]{8}$", name) is not None


_FILESYSTEMS: dict[str, object] = {}  # one filesystem object per scheme and bucket/host


@lru_cache(maxsize=None)
def _resolve(location: str):
    """(pyarrow filesystem, its path of `location`), or (None, location) for a local path."""
    if not is_uri(location):
        return None, str(location)
    import pyarrow.fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(location)
    except Exception as err:  # pyarrow says why: an unknown scheme, no credentials, no network
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise FFPipeError(f"cannot open run storage {location!r}: {first}. Use a local folder or a URI "
                          "that pyarrow opens (file:///abs/path, s3://bucket/path, gs://bucket/path, "
                          "hdfs://host:port/path; spaces written %20) with its credentials set") from None
    if isinstance(filesystem, pafs.LocalFileSystem):
        return None, path  # file://: the local path, with fsync and mmap
    parts = urlsplit(location)
    filesystem = _FILESYSTEMS.setdefault(f"{parts.scheme}://{parts.netloc}", filesystem)
    return filesystem, path.rstrip("/")


class Store:
    """A folder of a run's files, named relative to it ('checkpoints/stage-0/step-000000010.pt')."""

    def __init__(self, location: str | Path):
        self.location = str(location)
        self._fs, self._root = _resolve(self.location)

    @property
    def is_local(self) -> bool:
        return self._fs is None

    def _path(self, name: str) -> str:
        return posixpath.join(self._root, name) if not self.is_local else str(Path(self._root) / name)

    def local_path(self, name: str) -> Path | None:
        """The file on this machine's disk, or None on a remote store."""
        return Path(self._path(name)) if self.is_local else None

    # -- reading -------------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        if self.is_local:
            return Path(self._path(name)).is_file()
        from pyarrow.fs import FileType
        return self._fs.get_file_info(self._path(name)).type == FileType.File

    def mtime(self, name: str) -> float | None:
        """When the file was last written (seconds since the epoch); None: no such file."""
        if self.is_local:
            path = Path(self._path(name))
            return path.stat().st_mtime if path.is_file() else None
        from pyarrow.fs import FileType
        info = self._fs.get_file_info(self._path(name))
        return info.mtime.timestamp() if info.type == FileType.File and info.mtime else None

    def read_bytes(self, name: str) -> bytes:
        if self.is_local:
            return Path(self._path(name)).read_bytes()
        with self._fs.open_input_file(self._path(name)) as f:
            return f.read()

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode()

    def list(self, folder: str) -> list[str]:
        """Names of the files directly in `folder` ([] when it does not exist)."""
        if self.is_local:
            path = Path(self._path(folder))
            return sorted(p.name for p in path.iterdir() if p.is_file()) if path.is_dir() else []
        from pyarrow.fs import FileSelector, FileType
        infos = self._fs.get_file_info(FileSelector(self._path(folder), allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == FileType.File)

    # -- writing -------------------------------------------------------------------------------
    def write(self, name: str, fill: Callable[[BinaryIO], None]) -> None:
        """`fill(file)` writes the content; it appears under `name` whole, or not at all."""
        final = self._path(name)
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"  # unique: two writers never share one (is_temporary)
        try:
            if self.is_local:
                Path(final).parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as f:
                    fill(f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            else:
                self._fs.create_dir(posixpath.dirname(final), recursive=True)  # HDFS needs the folder; on S3 a marker
                with self._fs.open_output_stream(tmp) as f:
                    fill(f)
                self._fs.move(tmp, final)
        except BaseException:
            self._discard(tmp)
            raise

    def write_bytes(self, name: str, data: bytes) -> None:
        self.write(name, lambda f: f.write(data))

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def append_line(self, name: str, line: str) -> None:
        """One line at the end of a text file (made if missing)."""
        data = (line.rstrip("\n") + "\n").encode()
        if self.is_local:
            Path(self._path(name)).parent.mkdir(parents=True, exist_ok=True)
            with open(self._path(name), "ab") as f:  # O_APPEND: lines of several writers stay whole
                f.write(data)
            return
        try:
            self._fs.create_dir(posixpath.dirname(self._path(name)), recursive=True)
            with self._fs.open_append_stream(self._path(name)) as f:
                f.write(data)
        except NotImplementedError:  # object stores: rewrite it whole (one writer at a time)
            before = self.read_bytes(name) if self.exists(name) else b""
            self.write_bytes(name, before + data)

    def delete(self, name: str) -> None:
        self._discard(self._path(name))

    def _discard(self, path: str) -> None:
        try:
            if self.is_local:
                Path(path).unlink(missing_ok=True)
            else:
                self._fs.delete_file(path)
        except (FileNotFoundError, OSError):
            pass  # gone already, or never made

    def __str__(self) -> str:
        return self.location
