"""Data: sources read into uint8 ArraySets, per-class subsets, and loaders that batch on the device."""
from __future__ import annotations

from dataclasses import dataclass

from ffpipe.config import DataConfig
from ffpipe.data.arrays import ArraySet
from ffpipe.data.loader import DeviceLoader, channel_stats
from ffpipe.data.sources import load_source
from ffpipe.data.subset import per_class_subset

# Datasets whose images may be mirrored left-right without changing their class.
FLIPPABLE = {"fashion_mnist", "cifar10", "cifar100", "imagenette", "image_folder"}


@dataclass(frozen=True)
class DataInfo:
    """What stages that never read images need to know about the data (small, picklable)."""
    in_shape: tuple[int, ...]
    num_classes: int
    num_train: int
    mean: list[float]
    std: list[float]
    flip: bool


@dataclass
class DataBundle:
    train: ArraySet
    test: ArraySet
    mean: list[float]
    std: list[float]
    flip: bool

    @property
    def info(self) -> DataInfo:
        return DataInfo(self.train.shape, len(self.train.classes), len(self.train), self.mean,
                        self.std, self.flip)


def load_data(cfg: DataConfig, seed: int) -> DataBundle:
    train, test = load_source(cfg)
    mean, std = channel_stats(train.images)  # of the full training set, before any subset
    train = per_class_subset(train, cfg.train_subset, seed)
    return DataBundle(train, test, mean, std, flip=cfg.name in FLIPPABLE)


__all__ = ["ArraySet", "DataBundle", "DataInfo", "DeviceLoader", "load_data"]
