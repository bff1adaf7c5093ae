"""The same per-class subset of the training set for a given seed, on every backend and run."""
from __future__ import annotations

import torch

from ffpipe.data.arrays import ArraySet
from ffpipe.errors import DataError


def per_class_subset(data: ArraySet, amount: float, seed: int) -> ArraySet:
    """`amount` >= 1: that many images of each class; in (0, 1): that share of each class."""
    if amount == 0:
        return data
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(len(data.classes)):
        members = torch.nonzero(data.labels == c).flatten()
        n = int(amount) if amount >= 1 else max(1, round(amount * len(members)))
        if n > len(members):
            raise DataError(f"data.train_subset = {int(amount)} images per class, but class "
                            f"{c} ('{data.classes[c]}') has only {len(members)}; "
                            f"use at most {len(members)} or a fraction in (0, 1)")
        keep.append(members[torch.randperm(len(members), generator=gen)[:n]])
    return data.take(torch.cat(keep).sort().values)
