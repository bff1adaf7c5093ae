"""ArraySet: a split held as uint8 images (N x C x H x W) and int64 labels, with class names."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ffpipe.errors import DataError


@dataclass
class ArraySet:
    images: torch.Tensor   # uint8, N x C x H x W
    labels: torch.Tensor   # int64, N
    classes: list[str]

    def __post_init__(self):
        if self.images.dim() == 3:  # N x H x W grayscale
            self.images = self.images.unsqueeze(1)
        self.labels = self.labels.long()

    def check(self, where: str) -> "ArraySet":
        if len(self.images) != len(self.labels):
            raise DataError(f"{where}: {len(self.images)} images but {len(self.labels)} labels")
        if len(self.labels) == 0:
            raise DataError(f"{where}: the split is empty")
        low, high = int(self.labels.min()), int(self.labels.max())
        if low < 0 or high >= len(self.classes):
            raise DataError(f"{where}: labels run from {low} to {high}, but there are "
                            f"{len(self.classes)} classes (0..{len(self.classes) - 1})")
        return self

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def take(self, index: torch.Tensor) -> "ArraySet":
        return ArraySet(self.images[index], self.labels[index], self.classes)
