"""CIFAR-10 and CIFAR-100: the python pickle batches exactly as distributed.

cifar-10-batches-py/  data_batch_1..5, test_batch, batches.meta (label_names)
cifar-100-python/     train, test, meta (fine_label_names); labels are the 100 fine classes
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ffpipe.data.arrays import ArraySet
from ffpipe.errors import DataError

LAYOUTS = {
    "cifar10": {"folder": "cifar-10-batches-py", "meta": "batches.meta", "names": "label_names",
                "labels": "labels", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"]},
    "cifar100": {"folder": "cifar-100-python", "meta": "meta", "names": "fine_label_names",
                 "labels": "fine_labels", "train": ["train"], "test": ["test"]},
}
# A pickle can run any code it names; these batches only ever hold numpy arrays, lists and str.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict:
    """One batch file as a dict with str keys (latin1: the files were written by Python 2)."""
    try:
        with open(path, "rb") as f:
            entry = _ArraysOnly(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError) as err:
        raise DataError(f"cannot read CIFAR batch {path}: {type(err).__name__}: {err}; the file is "
                        "truncated or damaged, download the dataset again") from None
    if not isinstance(entry, dict):
        raise DataError(f"CIFAR batch {path} holds a {type(entry).__name__}, not a dict of arrays")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def find_cifar(name: str, folder: Path) -> Path | None:
    """The batches folder: `folder` itself or its cifar-10-batches-py / cifar-100-python child."""
    layout = LAYOUTS[name]
    for candidate in (folder, folder / layout["folder"]):
        if (candidate / layout["meta"]).is_file():
            return candidate
    return None


def _field(entry: dict, key: str, path: Path):
    if key not in entry:
        raise DataError(f"CIFAR batch {path} has no '{key}' entry (keys: {', '.join(map(str, entry))}); "
                        "is it a batch of the other CIFAR?")
    return entry[key]


def _read_batch(path: Path, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    entry = read_pickle(path)
    data = np.asarray(_field(entry, "data", path))
    labels = np.asarray(_field(entry, labels_key, path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"CIFAR batch {path}: 'data' is {data.dtype} {list(data.shape)}, "
                        "expected uint8 [N, 3072]; the file is damaged")
    if len(data) != len(labels):
        raise DataError(f"CIFAR batch {path}: {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar_split(name: str, folder: Path, split: str, classes: list[str]) -> ArraySet:
    layout = LAYOUTS[name]
    images, labels = [], []
    for file in layout[split]:
        path = folder / file
        if not path.is_file():
            raise DataError(f"{folder} has no {file}; the CIFAR folder is incomplete, download it again")
        x, y = _read_batch(path, layout["labels"])
        images.append(x)
        labels.append(y)
    data = ArraySet(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)),
                    classes)
    return data.check(f"{folder} ({split})")


def read_cifar(name: str, folder: Path) -> tuple[ArraySet, ArraySet]:
    meta_path = folder / LAYOUTS[name]["meta"]
    classes = [str(c) for c in _field(read_pickle(meta_path), LAYOUTS[name]["names"], meta_path)]
    return read_cifar_split(name, folder, "train", classes), read_cifar_split(name, folder, "test", classes)
