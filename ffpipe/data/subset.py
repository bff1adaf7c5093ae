"""The same per-class subsets for a given seed, on every backend and run: the training subset of
the small-data experiments, and held-out parts (validation; an image folder's test split)."""
from __future__ import annotations

import torch

from ffpipe.data.arrays import ArraySet
from ffpipe.errors import DataError


def per_class_subset(data: ArraySet, amount: float, seed: int) -> ArraySet:
    """`amount` >= 1: that many images of each class; in (0, 1): that share of each class."""
    if amount == 0:
        return data
    return data.take(subset_indices(data.labels, data.classes, amount, seed))


def subset_indices(labels: torch.Tensor, classes: list[str], amount: float, seed: int) -> torch.Tensor:
    """The sorted indices of per_class_subset's images (a streamed split keeps these rows)."""
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(len(classes)):
        members = torch.nonzero(labels == c).flatten()
        n = int(amount) if amount >= 1 else max(1, round(amount * len(members)))
        if n > len(members):
            raise DataError(f"data.train_subset = {int(amount)} images per class, but class "
                            f"{c} ('{classes[c]}') has only {len(members)}; "
                            f"use at most {len(members)} or a fraction in (0, 1)")
        keep.append(members[torch.randperm(len(members), generator=gen)[:n]])
    return torch.cat(keep).sort().values


def held_out_per_class(labels: torch.Tensor, classes: list[str], fraction: float, seed: int,
                       key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) indices, both sorted: `fraction` of every class (at least one image),
    drawn by `seed`. Every class keeps at least one image too; `key` names the config key. A
    class without images (labels read from files may skip one) has none to hold out."""
    gen = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for c in range(len(classes)):
        members = torch.nonzero(labels == c).flatten()
        if len(members) == 0:
            continue
        n = max(1, round(fraction * len(members)))
        if n >= len(members):
            raise DataError(f"{key} = {fraction} would hold out all {len(members)} images of class "
                            f"{c} ('{classes[c]}'); that class needs more images or a smaller {key}")
        shuffled = members[torch.randperm(len(members), generator=gen)]
        held.append(shuffled[:n])
        kept.append(shuffled[n:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values
