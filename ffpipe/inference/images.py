"""Image files for a trained network: found in the paths given, read with Pillow into the run's
input shape (C x H x W, uint8).

Channels: converted as Pillow converts them, to grayscale ("L") for a 1-channel run, to RGB for a
3-channel one (an alpha channel is dropped). Size: an image of the run's H x W is taken as it is;
any other is resized as ffpipe resizes an image folder for training (data/decode.py fit_square:
the shorter side to the run's size, antialiased bilinear, then the centre square), or, for a run
whose input is not square, stretched to H x W. A run trained from streamed shards (data.json's
eval_crop) crops a file as its evaluation did: the centre 224/256 of the shorter side, resized.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ffpipe.data.decode import DECODE_ERRORS, fit_square
from ffpipe.data.stream.crops import eval_box
from ffpipe.data.stream.decoders import pil_crop
from ffpipe.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_MODES = {1: "L", 3: "RGB"}


def image_files(paths: list[str | Path]) -> list[Path]:
    """The files named, and every image file (by suffix) under the folders named, sorted by path."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise DataError(f"folder {path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                                "name image files or a folder of them")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"{path} does not exist; name image files or folders of them")
    return found


def read_image(path: Path, in_shape: tuple[int, int, int], eval_crop: float = 1.0) -> torch.Tensor:
    """One file as uint8 C x H x W at the run's input shape (see the module's note)."""
    channels, height, width = in_shape
    if channels not in _MODES:
        raise DataError(f"this run takes {channels}-channel images; ffpipe predict reads 1- and 3-channel "
                        "ones: pass the images as a tensor to load_run(...).predict instead")
    try:
        if eval_crop != 1.0 and channels == 3 and height == width:  # streamed: its evaluation crop
            return torch.from_numpy(pil_crop(path.read_bytes(), eval_box, height, mirror=False).copy())
        with Image.open(path) as img:
            img = img.convert(_MODES[channels])
            if img.size != (width, height):
                img = fit_square(img, height) if height == width else img.resize((width, height), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except DECODE_ERRORS as err:
        raise DataError(f"cannot read image {path}: {type(err).__name__}: {err}; give PNG or JPEG files "
                        "(or any image Pillow opens)") from None
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())


def read_images(paths: list[Path], in_shape: tuple[int, int, int], eval_crop: float = 1.0) -> torch.Tensor:
    """N x C x H x W uint8 of the files, in order."""
    return torch.stack([read_image(p, in_shape, eval_crop) for p in paths]) if paths else \
        torch.zeros((0, *in_shape), dtype=torch.uint8)
