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


@dataclass
class DataBundle:
    train: ArraySet
    test: ArraySet
    mean: list[float]
    std: list[float]
    flip: bool

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return self.train.shape

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)


def load_data(cfg: DataConfig, seed: int) -> DataBundle:
    train, test = load_source(cfg)
    mean, std = channel_stats(train.images)  # of the full training set, before any subset
    train = per_class_subset(train, cfg.train_subset, seed)
    return DataBundle(train, test, mean, std, flip=cfg.name in FLIPPABLE)


__all__ = ["ArraySet", "DataBundle", "DeviceLoader", "load_data"]
