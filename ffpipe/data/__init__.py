"""Data: sources read into uint8 ArraySets, held-out and per-class subsets, and loaders that batch
on the device."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ffpipe.config import DataConfig
from ffpipe.data.arrays import ArraySet
from ffpipe.data.loader import DeviceLoader, channel_stats
from ffpipe.data.sources import load_source
from ffpipe.data.stream import EVAL_CROP, StreamLoader, StreamSplit, stream_splits, wants_stream
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
    # share of the shorter side an evaluation image keeps before it is resized (streamed sets
    # take ImageNet's centre 224/256; in-memory sets were resized whole: 1.0)
    eval_crop: float = 1.0


@dataclass
class DataBundle:
    train: ArraySet | StreamSplit  # StreamSplit: read batch by batch from shards (data.stream)
    test: ArraySet | StreamSplit
    mean: list[float]
    std: list[float]
    flip: bool
    val: ArraySet | None = None  # held out of the training set (data.val_fraction); None if 0

    @property
    def info(self) -> DataInfo:
        crop = EVAL_CROP if isinstance(self.train, StreamSplit) else 1.0
        return DataInfo(self.train.shape, len(self.train.classes), len(self.train), self.mean,
                        self.std, self.flip, tuple(self.train.classes), crop)


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
    if wants_stream(cfg):
        train, val, test, mean, std = stream_splits(cfg, seed, cfg.decode_threads or 1)
        return DataBundle(train, test, mean, std, wants_flip(cfg, train.dataset), val)
    source = load_source(cfg)
    train, val = split_validation(source.train, cfg)
    mean, std = channel_stats(train.images)  # of the training part, before any subset
    train = per_class_subset(train, cfg.train_subset, seed)
    return DataBundle(train, source.test, mean, std, wants_flip(cfg, source.dataset), val)


def training_loader(data: DataBundle, cfg: DataConfig, batch_size: int, seed: int, device,
                    drop_last: bool = True, dtype: torch.dtype = torch.float32,
                    keep_rows=None) -> DeviceLoader | StreamLoader:
    """The training batches as stage 0 draws them (seeded order, crops and flips on the device);
    `keep_rows`: a streamed split's rows this stage-0 replica decodes (StreamLoader)."""
    if isinstance(data.train, StreamSplit):
        return StreamLoader(data.train, batch_size, device, data.mean, data.std, train=True, seed=seed,
                            flip=data.flip, augment=cfg.augment, cutout=cfg.cutout,
                            **stream_options(cfg, device), drop_last=drop_last, dtype=dtype,
                            keep_rows=keep_rows)
    return DeviceLoader(data.train, batch_size, device, data.mean, data.std, train=True, seed=seed,
                        augment=cfg.augment, flip=data.flip, max_device_mib=cfg.on_device_max_mib,
                        cutout=cfg.cutout, drop_last=drop_last, dtype=dtype)


def eval_loader(split: ArraySet | StreamSplit, data: DataBundle, cfg: DataConfig, batch_size: int,
                device, dtype: torch.dtype = torch.float32, keep_rows=None) -> DeviceLoader | StreamLoader:
    """Evaluation batches of `split` (test or validation), in order, not augmented."""
    if isinstance(split, StreamSplit):
        return StreamLoader(split, batch_size, device, data.mean, data.std, train=False,
                            **stream_options(cfg, device), dtype=dtype, keep_rows=keep_rows)
    return DeviceLoader(split, batch_size, device, data.mean, data.std, train=False,
                        max_device_mib=cfg.on_device_max_mib, dtype=dtype)


def stream_options(cfg: DataConfig, device) -> dict:
    return {"decode": cfg.decode, "threads": cfg.decode_threads or default_threads(),
            "window": cfg.shuffle_window, "jpeg_decoder": cfg.jpeg_decoder}


def default_threads() -> int:
    """Decode threads when data.decode_threads = 0: the cores this process may run on (on a GPU,
    nvJPEG decodes the JPEGs and the threads the rest)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_model_input(data: ArraySet, in_shape: tuple[int, ...], split: str) -> None:
    """The images a loader is about to feed must have the shape the model was built for."""
    if tuple(data.shape) != tuple(in_shape):
        raise DataError(f"the {split} images are {list(data.shape)} (C, H, W) but the model was built "
                        f"for {list(in_shape)}; set data.image_size (and the dataset) to what the "
                        "model was trained on, or train a new model for these images")


__all__ = ["ArraySet", "DataBundle", "DataInfo", "DeviceLoader", "StreamLoader", "StreamSplit",
           "check_model_input", "eval_loader", "load_data", "stream_options", "training_loader"]
