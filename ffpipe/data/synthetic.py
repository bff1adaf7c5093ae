"""A deterministic synthetic image set that can be learned: one smooth random template per class
plus pixel noise. Templates are upsampled from 4 x 4, so small crops keep them recognisable."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ffpipe.data.arrays import ArraySet


def synthetic(num_train: int, num_test: int, shape: tuple[int, int, int], num_classes: int,
              seed: int = 1234) -> tuple[ArraySet, ArraySet]:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand((num_classes, shape[0], 4, 4), generator=gen) * 255
    templates = F.interpolate(coarse, size=shape[1:], mode="bilinear", align_corners=False)

    def draw(n: int) -> ArraySet:
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        noise = torch.randn((n, *shape), generator=gen) * 48
        images = (templates[labels] * 0.6 + 51 + noise).clamp(0, 255).to(torch.uint8)
        return ArraySet(images, labels, [f"class_{c}" for c in range(num_classes)])

    return draw(num_train), draw(num_test)
