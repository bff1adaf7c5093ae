"""Batches on the device: uint8 images stay uint8 until they are on it; crops, flips and
normalisation happen there, drawn per epoch from the seed (so a resumed run sees the same batches)."""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from ffpipe.data.arrays import ArraySet


def channel_stats(images_NCHW: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, accumulated in float64 chunks."""
    c = images_NCHW.shape[1]
    total, total_sq, count = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for chunk in images_NCHW.split(4096):
        v = chunk.to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        total += v.sum(1)
        total_sq += v.pow(2).sum(1)
        count += v.shape[1]
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def crop_and_flip(x_BCHW: torch.Tensor, offsets_B2: torch.Tensor, flip_B: torch.Tensor, pad: int) -> torch.Tensor:
    """Random crops of the zero-padded batch at `offsets`, mirrored where `flip` is set; no Python per image."""
    b, c, h, w = x_BCHW.shape
    padded = F.pad(x_BCHW, (pad, pad, pad, pad))
    rows_BH = offsets_B2[:, :1] + torch.arange(h, device=x_BCHW.device)
    cols_BW = offsets_B2[:, 1:] + torch.arange(w, device=x_BCHW.device)
    cols_BW = torch.where(flip_B[:, None], cols_BW.flip(1), cols_BW)
    out = padded.gather(2, rows_BH[:, None, :, None].expand(b, c, h, w + 2 * pad))
    return out.gather(3, cols_BW[:, None, None, :].expand(b, c, h, w))


class DeviceLoader:
    def __init__(self, data: ArraySet, batch_size: int, device: torch.device, mean: list[float],
                 std: list[float], *, train: bool, seed: int = 0, augment: bool = False,
                 flip: bool = False):
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.seed = seed
        self.augment = augment and train
        self.flip = flip
        self.pad = max(1, data.images.shape[-1] // 8)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        """Batches per epoch: training drops the last partial batch (static shapes per step)."""
        n = len(self.labels)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def _epoch_draws(self, epoch: int):
        # Drawn on the CPU from (seed, epoch): identical on every device type and on resume.
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen)
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        return order.to(self.device), offsets.to(self.device), flips.to(self.device)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images as normalised float, labels) for batches start, start+1, ... of `epoch`."""
        order = offsets = flips = None
        if self.train:
            order, offsets, flips = self._epoch_draws(epoch)
        for b in range(start, len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[sl] if order is not None else torch.arange(
                sl.start, min(sl.stop, len(self.labels)), device=self.device)
            x = self.images[idx].float().div_(255)
            if self.augment:
                x = crop_and_flip(x, offsets[sl], flips[sl], self.pad)
            yield (x - self.mean) / self.std, self.labels[idx]
