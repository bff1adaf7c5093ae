"""Data: sources read into uint8 ArraySets, held-out and per-class subsets, and loaders that batch
on the device."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ffpipe.config import DataConfig
from ffpipe.data.arrays import ArraySet
from ffpipe.data.loader import DeviceLoader, channel_stats
from ffpipe.data.sources import load_source
from ffpipe.data.subset import held_out_per_class, per_class_subset
from ffpipe.errors import DataError

# Datasets whose images may be mirrored left-right without changing their class (not digits).
FLIPPABLE = {"fashion_mnist", "cifar10", "cifar100", "imagenette", "image_folder", "image_parquet"}


@dataclass(frozen=True)
class DataInfo:
    """What stages that never read images need to know about the data (small, picklable)."""
    in_shape: tuple[int, ...]
    num_classes: int
    num_train: int
    mean: list[float]
    std: list[float]
    flip: bool
    classes: tuple[str, ...] = ()  # the class names, by label


@dataclass
class DataBundle:
    train: ArraySet
    test: ArraySet
    mean: list[float]
    std: list[float]
    flip: bool
    val: ArraySet | None = None  # held out of the training set (data.val_fraction); None if 0

    @property
    def info(self) -> DataInfo:
        return DataInfo(self.train.shape, len(self.train.classes), len(self.train), self.mean,
                        self.std, self.flip, tuple(self.train.classes))


def wants_flip(cfg: DataConfig, dataset: str) -> bool:
    return {"on": True, "off": False}.get(cfg.flip, dataset in FLIPPABLE)


def split_validation(train: ArraySet, cfg: DataConfig) -> tuple[ArraySet, ArraySet | None]:
    """(training part, validation part): data.val_fraction of each class, by data.split_seed."""
    if cfg.val_fraction == 0:
        return train, None
    kept, held = held_out_per_class(train.labels, train.classes, cfg.val_fraction, cfg.split_seed,
                                    "data.val_fraction")
    return train.take(kept), train.take(held)


def load_data(cfg: DataConfig, seed: int) -> DataBundle:
    source = load_source(cfg)
    train, val = split_validation(source.train, cfg)
    mean, std = channel_stats(train.images)  # of the training part, before any subset
    train = per_class_subset(train, cfg.train_subset, seed)
    return DataBundle(train, source.test, mean, std, wants_flip(cfg, source.dataset), val)


def training_loader(data: DataBundle, cfg: DataConfig, batch_size: int, seed: int, device,
                    drop_last: bool = True, dtype: torch.dtype = torch.float32) -> DeviceLoader:
    """The training batches as stage 0 draws them (seeded order, crops and flips on the device)."""
    return DeviceLoader(data.train, batch_size, device, data.mean, data.std, train=True, seed=seed,
                        augment=cfg.augment, flip=data.flip, max_device_mib=cfg.on_device_max_mib,
                        cutout=cfg.cutout, drop_last=drop_last, dtype=dtype)


def check_model_input(data: ArraySet, in_shape: tuple[int, ...], split: str) -> None:
    """The images a loader is about to feed must have the shape the model was built for."""
    if tuple(data.shape) != tuple(in_shape):
        raise DataError(f"the {split} images are {list(data.shape)} (C, H, W) but the model was built "
                        f"for {list(in_shape)}; set data.image_size (and the dataset) to what the "
                        "model was trained on, or train a new model for these images")


__all__ = ["ArraySet", "DataBundle", "DataInfo", "DeviceLoader", "check_model_input", "load_data",
           "training_loader"]
