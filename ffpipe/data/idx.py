"""IDX files (MNIST, Fashion-MNIST), gzip-compressed or not. Every failure names the file."""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from ffpipe.errors import DataError

_DTYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read IDX file {path}: {err}; the file is damaged or truncated, "
                        "download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated inside its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise DataError(f"IDX file {path} holds {len(raw)} bytes, its header {list(shape)} needs "
                        f"{expected}: the file is truncated or damaged, download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx(folder: Path, stem: str) -> Path | None:
    """`stem` with or without .gz (and the t10k/train names torchvision also uses)."""
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None
