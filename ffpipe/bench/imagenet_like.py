"""An ImageNet-like image folder for `ffpipe bench stream --make N`: JPEGs of about 500 x 375
(either orientation, sizes varying a little), quality 90, about 110 KB each, whose content has
ImageNet's mix of smooth regions and fine texture (what sets a JPEG's size and decode cost).
Written by a process per core; the class is the image's index modulo the class count."""
from __future__ import annotations

import io
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

FINE_NOISE = 24.0  # the texture's amplitude: ~110 KB per 500 x 375 JPEG at quality 90


def one_image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(440, 501)), int(rng.integers(330, 376))
    if rng.random() < 0.25:
        w, h = h, w  # portraits too
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    mid = Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
    pixels = 0.6 * np.asarray(base, np.float32) + 0.4 * np.asarray(mid, np.float32)
    pixels += rng.normal(0, FINE_NOISE, (h, w, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def jpeg_bytes(seed: int) -> bytes:
    """One image as its JPEG file's bytes (quality 90)."""
    out = io.BytesIO()
    one_image(seed).save(out, "JPEG", quality=90)
    return out.getvalue()


def _write(args: tuple[str, int, int]) -> int:
    root, index, classes = args
    data = jpeg_bytes(index)
    (Path(root) / f"class{index % classes:04d}" / f"img{index:08d}.jpg").write_bytes(data)
    return len(data)


def make_image_folder(root: Path, images: int, classes: int, test_images: int) -> dict:
    """root/train and root/test class folders of ImageNet-like JPEGs; returns their count and size."""
    sizes = 0
    for split, n, first in (("train", images, 0), ("test", test_images, images)):
        for c in range(classes):
            (root / split / f"class{c:04d}").mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
            jobs = [(str(root / split), first + i, classes) for i in range(n)]
            sizes += sum(pool.map(_write, jobs, chunksize=64))
    return {"images": images + test_images, "mean_kb": sizes / (images + test_images) / 1024}
