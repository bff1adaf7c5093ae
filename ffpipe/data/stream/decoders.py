"""Encoded images (JPEG/PNG bytes) to one batch of size x size crops: on CPU threads with PIL
(libjpeg-turbo; PIL lets go of the GIL while it decodes and resizes), or on the GPU with nvJPEG
(a batch at a time) and the same antialiased resize for the batch's crops at once (one Triton
kernel, kernels/crop_resize.py; resize.py where Triton does not run).
The GPU path decodes with TorchCodec where it is installed and loads (torchvision deprecated its
image decoders in 0.29 for TorchCodec's), else with torchvision.io, or with the library that
data.jpeg_decoder names (`codecs()`; nvImageCodec's backends in nvimgcodec.py).

Both crop the same box (crops.py) and resize it with antialiased bilinear filtering, which torch
made to follow PIL's; what differs is the JPEG decoder's rounding. A batch either decodes whole or
stops the run with a DataError naming the shard, the row and the source file: a model never
trains on an image that did not decode.
"""
from __future__ import annotations

import functools
import io
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ffpipe.data.decode import DECODE_ERRORS, damaged_image
from ffpipe.data.stream import nvimgcodec
from ffpipe.data.stream.crops import Box
from ffpipe.data.stream.resize import crops_resized
from ffpipe.errors import ConfigError

BoxOf = Callable[[int, int, int], Box]  # (row in the batch, height, width) -> its crop
JPEG_MAGIC = b"\xff\xd8"


def _draft(img: Image.Image, box: Box, size: int) -> tuple[Image.Image, tuple[float, ...]]:
    """The crop as PIL's (left, top, right, bottom). For a JPEG whose crop is at least twice
    `size` on each side the decoder scales down by 2, 4 or 8 as it decodes (far less work), and
    the box follows into the smaller image."""
    top, left, ch, cw = box
    w, h = img.size
    if img.format == "JPEG" and min(ch, cw) >= 2 * size:
        img.draft(img.mode, (max(1, w * size // cw), max(1, h * size // ch)))
    sx, sy = img.size[0] / w, img.size[1] / h
    return img, (left * sx, top * sy, min((left + cw) * sx, img.size[0]), min((top + ch) * sy, img.size[1]))


def pil_crop(blob, box_of: Callable[[int, int], Box], size: int, mirror: bool) -> np.ndarray:
    """3 x size x size uint8 of one image: its box resized to size (antialiased bilinear)."""
    img = Image.open(io.BytesIO(blob))
    w, h = img.size
    img, box = _draft(img, box_of(h, w), size)
    img = img.convert("RGB").resize((size, size), Image.BILINEAR, box=box)
    if mirror:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


class CpuDecoder:
    """Decodes on `threads` threads into a uint8 batch in host memory."""

    def __init__(self, threads: int):
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="ffpipe-decode")
        self.seconds = {"decode+crop": 0.0}  # wall time of the batches (threads work together)

    def batch(self, blobs: Sequence, names: Sequence[str], box_of: BoxOf, size: int,
              mirror: np.ndarray) -> torch.Tensor:
        out = np.empty((len(blobs), 3, size, size), dtype=np.uint8)

        def work(i: int) -> None:
            try:
                out[i] = pil_crop(blobs[i], lambda h, w: box_of(i, h, w), size, bool(mirror[i]))
            except DECODE_ERRORS as err:
                raise damaged_image(names[i], err) from None

        started = time.perf_counter()
        for _ in self.pool.map(work, range(len(blobs))):  # re-raises the first failure
            pass
        self.seconds["decode+crop"] += time.perf_counter() - started
        return torch.from_numpy(out)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Codecs:
    """One library's image decoders, to RGB uint8 C x H x W tensors."""
    name: str
    jpegs: Callable[[list, torch.device], list]  # a batch of JPEGs (1-D uint8 tensors) on a device
    image: Callable[[torch.Tensor], torch.Tensor]  # any format it reads, on the CPU
    errors: tuple  # what it raises for data it cannot decode


def torchcodec_codecs() -> Codecs | None:
    """TorchCodec's decoders, or None where it is not installed or does not load (its compiled
    parts are built for one torch version)."""
    try:
        from torchcodec.decoders import decode_image, decode_jpeg
    except (ImportError, OSError, RuntimeError):
        return None
    return Codecs("torchcodec", lambda data, device: decode_jpeg(data, mode="RGB", device=device),
                  lambda data: decode_image(data, mode="RGB"), (RuntimeError, ValueError))


def torchvision_codecs() -> Codecs:
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    return Codecs("torchvision", lambda data, device: decode_jpeg(data, mode=ImageReadMode.RGB, device=device),
                  lambda data: decode_image(data, mode=ImageReadMode.RGB), (RuntimeError,))


def nvimgcodec_codecs(backend: str) -> Codecs | None:
    """nvImageCodec's JPEG decoder on one backend (nvimgcodec.py), TorchCodec's or torchvision's
    for other formats on the CPU; None where nvImageCodec does not load."""
    decoder = nvimgcodec.load(backend)
    if decoder is None:
        return None
    other = codecs("auto")  # for PNGs and what nvImageCodec refuses
    return Codecs(f"nvimgcodec-{backend}", decoder.jpegs, other.image, (nvimgcodec.Undecodable, *other.errors))


@functools.lru_cache(maxsize=None)
def codecs(library: str = "auto") -> Codecs:
    """The JPEG library of data.jpeg_decoder: 'auto' takes TorchCodec where it loads, else
    torchvision; a named one that does not load is an error that says what to install."""
    if library == "auto":
        return torchcodec_codecs() or torchvision_codecs()
    if library == "torchvision":
        return torchvision_codecs()
    found = torchcodec_codecs() if library == "torchcodec" else nvimgcodec_codecs(library.split("-", 1)[1])
    if found is None:
        install = ("pip install 'ffpipe[images]'" if library == "torchcodec"
                   else "pip install 'ffpipe[nvimgcodec]' (CUDA 13; for CUDA 12: "
                        "pip install 'nvidia-nvimgcodec-cu12[nvjpeg]')")
        raise ConfigError(f"data.jpeg_decoder = '{library}' does not load here: {install}, or set "
                          f"data.jpeg_decoder = 'auto'")
    return found


def encoded(blobs: Sequence) -> tuple[list[torch.Tensor], np.ndarray]:
    """Each blob (bytes or a uint8 array) as a 1-D uint8 tensor, and which are JPEGs. The batch's
    bytes are copied once into one tensor and split into views of it: a copy and a tensor per
    blob from Python held the GIL the decoder's other threads wait on."""
    arrays = [b if isinstance(b, np.ndarray) else np.frombuffer(b, dtype=np.uint8) for b in blobs]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    joined = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.uint8)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    long_enough = lengths >= 2
    heads = joined[np.where(long_enough, starts, 0)], joined[np.where(long_enough, starts + 1, 0)]
    is_jpeg = long_enough & (heads[0] == JPEG_MAGIC[0]) & (heads[1] == JPEG_MAGIC[1])
    return list(torch.split(torch.from_numpy(joined), lengths.tolist())), is_jpeg


def _cpu_decode(codec: Codecs, data: torch.Tensor, name: str) -> torch.Tensor:
    try:
        return codec.image(data)
    except codec.errors as err:
        raise damaged_image(name, err) from None


class GpuDecoder:
    """nvJPEG on `device` for the JPEGs of a batch (one batched call), PIL for anything else; the
    crops resized on the device into a float batch of 0-255 values."""

    def __init__(self, device: torch.device, threads: int, codec: Codecs | None = None):
        self.device, self.cpu = device, CpuDecoder(threads)  # its threads decode what nvJPEG does not
        self.codec = codec or codecs()
        # the thread's wall time in each; nvJPEG returns when its batch is decoded
        self.seconds = {"decode": 0.0, "crop": 0.0}

    def _decode(self, blobs: Sequence, names: Sequence[str]) -> list[torch.Tensor]:
        data, is_jpeg = encoded(blobs)
        jpegs = np.flatnonzero(is_jpeg).tolist()
        images: list = [None] * len(blobs)
        try:
            for i, img in zip(jpegs, self.codec.jpegs([data[i] for i in jpegs], self.device) if jpegs else []):
                images[i] = img
        except self.codec.errors:
            pass  # nvJPEG refused one of them (CMYK, damaged): all go through the CPU, which names it
        rest = [i for i in range(len(blobs)) if images[i] is None]
        for i, img in zip(rest, self.cpu.pool.map(lambda i: _cpu_decode(self.codec, data[i], names[i]), rest)):
            images[i] = img.to(self.device)
        return images

    def batch(self, blobs: Sequence, names: Sequence[str], box_of: BoxOf, size: int,
              mirror: np.ndarray) -> torch.Tensor:
        started = time.perf_counter()
        images = self._decode(blobs, names)
        decoded = time.perf_counter()
        self.seconds["decode"] += decoded - started
        boxes = [box_of(i, img.shape[1], img.shape[2]) for i, img in enumerate(images)]
        out = crops_resized(images, boxes, mirror, size)  # the batch at once (resize.py)
        self.seconds["crop"] += time.perf_counter() - decoded
        return out

    def close(self) -> None:
        self.cpu.close()
