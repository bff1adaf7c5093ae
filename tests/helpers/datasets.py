"""Small datasets written in the real on-disk formats: IDX files, CIFAR pickle batches, image folders,
Hugging Face-style Parquet files."""
from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def write_idx(path, array: np.ndarray, compress: bool = True) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def fake_idx_dataset(folder, n_train=40, n_test=20, compress=True):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        ext = ".gz" if compress else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{ext}", images, compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", labels, compress)
        arrays[split] = (images, labels)
    return arrays


def _dump(path: Path, entry: dict) -> None:
    # Protocol 2 and numpy.core (not numpy 2's numpy._core): as in the distributed batches,
    # which were pickled by Python 2 with numpy 1.
    raw = pickle.dumps(entry, protocol=2)
    path.write_bytes(raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


def fake_cifar(folder: Path, num_classes: int = 10, per_batch: int = 20, n_test: int = 30) -> dict:
    """cifar-10-batches-py (num_classes 10) or cifar-100-python (100) under `folder`; returns the
    expected train/test images (N x 3 x 32 x 32) and labels."""
    rng = np.random.default_rng(num_classes)
    ten = num_classes == 10
    base = folder / ("cifar-10-batches-py" if ten else "cifar-100-python")
    base.mkdir(parents=True)
    names = [f"class_{c}" for c in range(num_classes)]
    label_key = "labels" if ten else "fine_labels"
    batches = {"train": [f"data_batch_{i}" for i in range(1, 6)] if ten else ["train"], "test": ["test_batch" if ten else "test"]}
    _dump(base / ("batches.meta" if ten else "meta"), {"label_names" if ten else "fine_label_names": names})
    expected = {}
    for split, files in batches.items():
        xs, ys = [], []
        for file in files:
            n = per_batch if split == "train" else n_test
            x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            y = [int(v) for v in rng.integers(0, num_classes, n)]
            entry = {"data": x, label_key: y, "batch_label": file, "filenames": [f"{i}.png" for i in range(n)]}
            if not ten:
                entry["coarse_labels"] = [v // 5 for v in y]
            _dump(base / file, entry)
            xs.append(x)
            ys += y
        expected[split] = (np.concatenate(xs).reshape(-1, 3, 32, 32), np.array(ys))
    return expected


def fake_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 6, size=(20, 20),
                      suffix: str = ".png", split_dirs=("train", "test")) -> None:
    """Class folders of random RGB images; under root/<split>/ for each of `split_dirs`, or
    directly under root when split_dirs is empty."""
    rng = np.random.default_rng(len(classes) + per_class)
    for split in split_dirs or ("",):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img_{i}{suffix}")


def pil_pixels(path: Path) -> np.ndarray:
    """PIL's own decode of a file: what the loaders must give, as 3 x H x W uint8."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1)


def png_bytes(pixels_HWC: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels_HWC).save(out, format="PNG")
    return out.getvalue()


def fake_image_parquet(path: Path, labels, names=None, size=(10, 10), row_group_size: int = 4,
                       seed: int = 0) -> list[bytes]:
    """A Parquet file as Hugging Face `datasets` writes one: image struct{bytes, path} of PNGs,
    integer label, and (with `names`) the label names in the schema metadata; returns the PNGs."""
    rng = np.random.default_rng(seed)
    pngs = [png_bytes(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in labels]
    image = pa.array([{"bytes": b, "path": None} for b in pngs],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = pa.table({"image": image, "label": pa.array(labels, pa.int64())})
    if names is not None:
        features = {"image": {"_type": "Image"}, "label": {"names": list(names), "_type": "ClassLabel"}}
        table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return pngs
