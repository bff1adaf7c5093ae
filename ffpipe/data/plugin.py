"""A dataset a user brings (data.name = "package.module:function", ffpipe/plugins.py). The function
returns its two splits, as {"train": ..., "test": ...} or a (train, test) pair, each an
ffpipe.data.arrays.ArraySet or a tuple (images, labels, classes): images uint8, N x C x H x W
(or N x H x W: one channel), a torch tensor or a NumPy array; labels integers 0..len(classes)-1;
classes the class names. It is called with those of `root` (data.root), `image_size`
(data.image_size) and `seed` (data.split_seed) it takes. Only stage 0 reads images; every split
and subset key (data.val_fraction, data.train_subset) applies as to ffpipe's own datasets."""
from __future__ import annotations

import torch

from ffpipe.data.arrays import ArraySet
from ffpipe.errors import DataError
from ffpipe.plugins import call, load


def plugin_splits(cfg) -> tuple[ArraySet, ArraySet]:
    fn = load(cfg.name, "data.name")
    splits = call(fn, "data.name", root=cfg.root, image_size=cfg.image_size, seed=cfg.split_seed)
    if isinstance(splits, dict) and set(splits) >= {"train", "test"}:
        splits = (splits["train"], splits["test"])
    if not isinstance(splits, (tuple, list)) or len(splits) != 2:
        raise DataError(f"data.name = {cfg.name!r} must return {{'train': ..., 'test': ...}} or a (train, test) "
                        f"pair, got {type(splits).__name__}")
    return tuple(_array_set(split, f"data.name = {cfg.name!r}, {part} split")
                 for split, part in zip(splits, ("train", "test")))


def _array_set(split, where: str) -> ArraySet:
    if isinstance(split, ArraySet):
        return split.check(where)
    if not isinstance(split, (tuple, list)) or len(split) != 3:
        raise DataError(f"{where}: expected an ArraySet or (images, labels, classes), got {type(split).__name__}")
    images, labels, classes = (torch.as_tensor(split[0]), torch.as_tensor(split[1]), list(split[2]))
    if images.dtype != torch.uint8:
        raise DataError(f"{where}: images must be uint8 (0..255), got {images.dtype}; convert them, e.g. "
                        "(x * 255).round().to(torch.uint8) for floats in [0, 1]")
    if images.dim() not in (3, 4):
        raise DataError(f"{where}: images must be N x C x H x W (or N x H x W), got shape {list(images.shape)}")
    if labels.dtype.is_floating_point or labels.dim() != 1:
        raise DataError(f"{where}: labels must be one integer per image, got {labels.dtype} {list(labels.shape)}")
    return ArraySet(images.contiguous(), labels.long(), [str(c) for c in classes]).check(where)
