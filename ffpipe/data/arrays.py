"""ArraySet: a split held as uint8 images (N x C x H x W) and int64 labels, with class names."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


def resized(data: ArraySet, size: int, chunk: int = 4096) -> ArraySet:
    """Images resized to size x size (antialiased bilinear, rounded back to uint8); as is if 0 or
    already that size. Done once when the data is read, never per batch."""
    if size == 0 or data.shape[1:] == (size, size):
        return data
    out = torch.empty((len(data), data.shape[0], size, size), dtype=torch.uint8)
    for start in range(0, len(data), chunk):
        x = data.images[start:start + chunk].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return ArraySet(out, data.labels, data.classes)
