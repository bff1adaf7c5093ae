"""JPEG/PNG decoding into one uint8 N x 3 x S x S array, once, on a thread pool (PIL releases the
GIL while it decodes and resizes), so training never waits on per-image Python work."""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ffpipe.errors import DataError

Encoded = Union[Path, bytes]  # a file to read, or its bytes (from a Parquet shard)
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError,
                  Image.DecompressionBombError)


def num_threads(requested: int) -> int:
    return requested or os.cpu_count() or 1


def _open(item: Encoded) -> Image.Image:
    return Image.open(item if isinstance(item, Path) else io.BytesIO(item))


def fit_square(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size` (antialiased bilinear), then the centre `size` x `size` crop."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def damaged_image(name: str, err: Exception) -> DataError:
    return DataError(f"cannot read image {name}: {type(err).__name__}: {err}; the file is "
                     "truncated, damaged or not a JPEG/PNG: replace or delete it")


def decode_one(item: Encoded, size: int) -> np.ndarray:
    """3 x size x size uint8 of one image (RGB, whatever the file's own mode)."""
    img = _open(item)
    if img.format == "JPEG" and min(img.size) >= 2 * size:
        img.draft("RGB", (size, size))  # let the JPEG decoder downscale by 2/4/8: much less work
    img = fit_square(img.convert("RGB"), size)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def decode_all(items: Sequence[Encoded], names: Sequence[str], size: int, threads: int = 0,
               out: np.ndarray | None = None) -> np.ndarray:
    """Every item decoded to `size`; the error of a damaged file names it (`names[i]`)."""
    assert len(items) == len(names)
    out = np.empty((len(items), 3, size, size), dtype=np.uint8) if out is None else out

    def work(i: int) -> None:
        try:
            out[i] = decode_one(items[i], size)
        except DECODE_ERRORS as err:
            raise damaged_image(names[i], err) from None

    with ThreadPoolExecutor(num_threads(threads)) as pool:
        for _ in pool.map(work, range(len(items))):  # re-raises the first failure
            pass
    return out


def image_sizes(items: Sequence[Encoded], names: Sequence[str], threads: int = 0) -> np.ndarray:
    """int32 N x 2: (height, width) of every image, read from its header (nothing decoded); an
    item that does not open as an image is refused with its name (`names[i]`)."""
    def size_of(i: int) -> tuple[int, int]:
        try:
            with _open(items[i]) as img:
                return img.size[::-1]
        except DECODE_ERRORS as err:
            raise damaged_image(names[i], err) from None

    with ThreadPoolExecutor(num_threads(threads)) as pool:
        return np.array(list(pool.map(size_of, range(len(items)))), dtype=np.int32).reshape(-1, 2)


def common_size(items: Sequence[Encoded], names: Sequence[str], threads: int = 0) -> int:
    """The side of square images that all have the same size (headers only, nothing decoded)."""
    hw = image_sizes(items, names, threads)
    odd = np.flatnonzero((hw != hw[0]).any(1) | (hw[:, 0] != hw[:, 1]))
    if len(odd):
        (h, w), (oh, ow) = hw[0], hw[odd[0]]
        raise DataError(f"images differ in size or are not square ({w}x{h} in {names[0]}, {ow}x{oh} "
                        f"in {names[odd[0]]}); set data.image_size to the side they should all be "
                        "resized to")
    return int(hw[0, 0])
