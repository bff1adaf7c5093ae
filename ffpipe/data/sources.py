"""Where each dataset's files are, and reading them into ArraySets (train and test as published).

Every source gives the same thing: uint8 N x C x H x W images, int64 labels and class names, read
once. Parquet shards written by `ffpipe data prepare` give back exactly what their source gave.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ffpipe.config import DataConfig
from ffpipe.data.arrays import ArraySet, resized
from ffpipe.data.cifar import find_cifar, read_cifar
from ffpipe.data.folders import find_imagenette, read_image_folder
from ffpipe.data.idx import find_idx, read_idx
from ffpipe.data.locate import Place, imagenette_download, locate, torchvision_download
from ffpipe.data.plugin import plugin_splits
from ffpipe.data.shards import read_split
from ffpipe.data.synthetic import synthetic
from ffpipe.errors import DataError
from ffpipe.plugins import is_plugin

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
IDX_CLASSES = {"fashion_mnist": FASHION_CLASSES, "mnist": [str(d) for d in range(10)]}
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
DEFAULT_SIZE = {"imagenette": 160}  # data.image_size = 0 for sets whose files vary in size


def find_idx_folder(folder: Path) -> Path | None:
    """`folder`, or the raw/ folder torchvision downloads IDX files into."""
    for candidate in (folder, folder / "FashionMNIST" / "raw", folder / "MNIST" / "raw"):
        if find_idx(candidate, IDX_FILES["train"][0]) is not None:
            return candidate
    return None


PLACES = {
    "fashion_mnist": Place("fashion_mnist", find_idx_folder,
                           "on Debian/Ubuntu: apt-get install dataset-fashion-mnist; or put the four "
                           "*-ubyte.gz files from github.com/zalandoresearch/fashion-mnist there",
                           ("/usr/share/datasets/fashion-mnist",), torchvision_download("FashionMNIST")),
    "mnist": Place("mnist", find_idx_folder, "put the four *-ubyte.gz files of MNIST there",
                   ("/usr/share/datasets/mnist",), torchvision_download("MNIST")),
    "cifar10": Place("cifar10", partial(find_cifar, "cifar10"),
                     "unpack cifar-10-python.tar.gz from www.cs.toronto.edu/~kriz/cifar.html there",
                     ("/usr/share/datasets/cifar10",), torchvision_download("CIFAR10")),
    "cifar100": Place("cifar100", partial(find_cifar, "cifar100"),
                      "unpack cifar-100-python.tar.gz from www.cs.toronto.edu/~kriz/cifar.html there",
                      ("/usr/share/datasets/cifar100",), torchvision_download("CIFAR100")),
    "imagenette": Place("imagenette", find_imagenette,
                        "unpack imagenette2-160.tgz (or imagewoof2-160.tgz) from "
                        "github.com/fastai/imagenette there", ("/usr/share/datasets/imagenette",),
                        imagenette_download),
}


@dataclass
class Source:
    train: ArraySet
    test: ArraySet
    dataset: str  # where the images come from; for shards, the dataset they were prepared from


def _read_idx_split(folder: Path, split: str, classes: list[str]) -> ArraySet:
    paths = []
    for stem in IDX_FILES[split]:
        path = find_idx(folder, stem)
        if path is None:
            raise DataError(f"{folder} has no {stem}[.gz]; the dataset folder is incomplete")
        paths.append(path)
    images, labels = (torch.from_numpy(read_idx(p).copy()) for p in paths)
    return ArraySet(images, labels, classes).check(f"{paths[0]} / {paths[1]}")


def target_size(cfg: DataConfig) -> int:
    return cfg.image_size or DEFAULT_SIZE.get(cfg.name, 0)


def folder_root(cfg: DataConfig) -> Path:
    """The image folder of imagenette (found or downloaded) or image_folder (data.root)."""
    if cfg.name == "imagenette":
        return locate(PLACES["imagenette"], cfg.root, target_size(cfg), cfg.download)
    return Path(cfg.root).expanduser()


def _read(cfg: DataConfig) -> Source:
    name = cfg.name
    if is_plugin(name):
        return Source(*plugin_splits(cfg), name)
    if name == "synthetic":
        c, h, w = (int(v) for v in cfg.synthetic_shape)
        return Source(*synthetic(cfg.synthetic_train, cfg.synthetic_test, (c, h, w), cfg.synthetic_classes), name)
    if name == "parquet":
        train, meta = read_split(cfg.root, "train", cfg.image_size, cfg.decode_threads)
        test, _ = read_split(cfg.root, "test", cfg.image_size, cfg.decode_threads)
        return Source(train, test, meta["dataset"])
    if name in ("imagenette", "image_folder"):
        return Source(*read_image_folder(folder_root(cfg), target_size(cfg), cfg.test_fraction,
                                         cfg.split_seed, cfg.decode_threads), name)
    folder = locate(PLACES[name], cfg.root, cfg.image_size, cfg.download)
    if name in IDX_CLASSES:
        classes = IDX_CLASSES[name]
        return Source(_read_idx_split(folder, "train", classes), _read_idx_split(folder, "test", classes), name)
    return Source(*read_cifar(name, folder), name)


def load_source(cfg: DataConfig) -> Source:
    """Train and test of the configured dataset as read (resized to data.image_size if set; no
    subset, no validation part, no normalisation)."""
    source = _read(cfg)
    source.train, source.test = resized(source.train, cfg.image_size), resized(source.test, cfg.image_size)
    if source.test.shape != source.train.shape or source.test.classes != source.train.classes:
        raise DataError(f"dataset '{cfg.name}': test images {list(source.test.shape)} with "
                        f"{len(source.test.classes)} classes disagree with training images "
                        f"{list(source.train.shape)} with {len(source.train.classes)} classes; "
                        "both splits must come from the same source (prepare the shards again)")
    return source
