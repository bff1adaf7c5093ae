"""Where each dataset's files are, and reading them into ArraySets."""
from __future__ import annotations

from pathlib import Path

import torch

from ffpipe.config import DataConfig
from ffpipe.data.arrays import ArraySet
from ffpipe.data.idx import find_idx, read_idx
from ffpipe.data.synthetic import synthetic
from ffpipe.errors import DataError

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
IDX_SETS = {
    "fashion_mnist": {
        "classes": FASHION_CLASSES,
        "places": ["/usr/share/datasets/fashion-mnist", "~/.cache/ffpipe/fashion_mnist",
                   "data/fashion_mnist"],
        "how": "on Debian/Ubuntu: apt-get install dataset-fashion-mnist; or put the four "
               "*-ubyte.gz files from github.com/zalandoresearch/fashion-mnist there",
    },
    "mnist": {
        "classes": [str(d) for d in range(10)],
        "places": ["~/.cache/ffpipe/mnist", "data/mnist", "/usr/share/datasets/mnist"],
        "how": "put the four *-ubyte.gz files of MNIST there",
    },
}
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx_folder(name: str, root: str) -> Path:
    spec = IDX_SETS[name]
    places = [root] if root else spec["places"]
    for place in places:
        folder = Path(place).expanduser()
        if find_idx(folder, IDX_FILES["train"][0]) is not None:
            return folder
    raise DataError(f"dataset '{name}' not found; looked in: {', '.join(places)}. "
                    f"Get it: {spec['how']}, or set data.root to the folder that holds the files")


def _read_idx_split(folder: Path, split: str, classes: list[str]) -> ArraySet:
    paths = []
    for stem in IDX_FILES[split]:
        path = find_idx(folder, stem)
        if path is None:
            raise DataError(f"{folder} has no {stem}[.gz]; the dataset folder is incomplete")
        paths.append(path)
    images, labels = (torch.from_numpy(read_idx(p).copy()) for p in paths)
    return ArraySet(images, labels, classes).check(f"{paths[0]} / {paths[1]}")


def load_source(cfg: DataConfig) -> tuple[ArraySet, ArraySet]:
    """(train, test) of the configured dataset, as read from disk (no subset, no normalisation)."""
    if cfg.name == "synthetic":
        c, h, w = (int(v) for v in cfg.synthetic_shape)
        return synthetic(cfg.synthetic_train, cfg.synthetic_test, (c, h, w), cfg.synthetic_classes)
    folder = _idx_folder(cfg.name, cfg.root)
    classes = IDX_SETS[cfg.name]["classes"]
    return _read_idx_split(folder, "train", classes), _read_idx_split(folder, "test", classes)
