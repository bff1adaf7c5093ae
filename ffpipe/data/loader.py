"""Batches on the device: uint8 images stay uint8 until they are on it; crops, flips and
normalisation happen there, drawn per epoch from the seed (so a resumed run sees the same batches)."""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from ffpipe.data.arrays import ArraySet


class ChannelSums:
    """Running per-channel sums of uint8 images in [0, 1] units (float64), chunk by chunk."""

    def __init__(self, channels: int):
        self.total = torch.zeros(channels, dtype=torch.float64)
        self.total_sq = torch.zeros(channels, dtype=torch.float64)
        self.count = 0

    def add(self, images_NCHW: torch.Tensor) -> None:
        v = images_NCHW.to(torch.float64).div_(255).transpose(0, 1).reshape(len(self.total), -1)
        self.total += v.sum(1)
        self.total_sq += v.pow(2).sum(1)
        self.count += v.shape[1]

    def stats(self) -> tuple[list[float], list[float]]:
        mean = self.total / self.count
        std = (self.total_sq / self.count - mean.pow(2)).clamp_min(1e-12).sqrt()
        return mean.tolist(), std.tolist()


def channel_stats(images_NCHW: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, accumulated in float64 chunks."""
    sums = ChannelSums(images_NCHW.shape[1])
    per_image = max(1, images_NCHW[0].numel() * 8)  # bytes of one image in float64
    for chunk in images_NCHW.split(max(1, min(4096, (128 << 20) // per_image))):  # <= 128 MB at a time
        sums.add(chunk)
    return sums.stats()


def batches_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


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
    """Training or test batches of `data` on `device`. The uint8 images live on the device when
    they fit in `max_device_mib` (None: always); larger sets stay in host memory and each batch
    is gathered there into a pinned buffer and copied over, so only batches cross the bus."""

    decodes_beside_step = False  # its gathers and crops run on the stage's own stream, in the step's way

    def __init__(self, data: ArraySet, batch_size: int, device: torch.device, mean: list[float],
                 std: list[float], *, train: bool, seed: int = 0, augment: bool = False,
                 flip: bool = False, max_device_mib: float | None = None, cutout: int = 0,
                 drop_last: bool = True, dtype: torch.dtype = torch.float32):
        """`dtype`: of the normalised images (stage 0's input dtype: bf16 where its first layer
        would cast them to it anyway, so queued batches take half the memory)."""
        self.dtype = dtype
        self.host = max_device_mib is not None and data.images.nbytes > max_device_mib * 2**20
        self.images = data.images if self.host else data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.drop_last = drop_last and train
        self.seed = seed
        self.augment = augment and train
        self.flip = flip
        self.cutout = cutout if train else 0
        self.pad = max(1, data.images.shape[-1] // 8)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        """Batches per epoch: training drops the last partial batch unless told not to (steps
        of one shape are what a CUDA graph replays)."""
        return batches_per_epoch(len(self.labels), self.batch_size, self.drop_last)

    def _epoch_draws(self, epoch: int):
        # Drawn on the CPU from (seed, epoch): identical on every device type and on resume.
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen)
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        # drawn last: runs without cutout draw exactly what they drew before it existed
        centres = torch.stack([torch.randint(0, s, (n,), generator=gen) for s in self.images.shape[-2:]], dim=1) \
            if self.cutout else None
        return order, offsets.to(self.device), flips.to(self.device), \
            None if centres is None else centres.to(self.device)

    def _index_batches(self, order: torch.Tensor | None, start: int):
        """(slice of the epoch, indices on the host, the same on the device) of batches start, ...
        The order moves to the device once per epoch: a per-batch copy from pageable memory
        would make the host wait for the GPU every step."""
        n = len(self.labels)
        order_dev = order.to(self.device) if order is not None else None
        for b in range(start, len(self)):
            sl = slice(b * self.batch_size, min((b + 1) * self.batch_size, n))
            if order is None:
                yield sl, torch.arange(sl.start, sl.stop), torch.arange(sl.start, sl.stop, device=self.device)
            else:
                yield sl, order[sl], order_dev[sl]

    def _host_gather(self, index_batches):
        """uint8 batches gathered in host memory, copied to the device through two pinned buffers
        taken in turn: a buffer is refilled only after the copy out of it has finished."""
        pinned = self.device.type == "cuda"
        staging = [torch.empty((self.batch_size, *self.images.shape[1:]), dtype=torch.uint8,
                               pin_memory=pinned) for _ in range(2)]
        copied = [None, None]
        for k, (sl, idx, idx_dev) in enumerate(index_batches):
            buf = staging[k % 2][:len(idx)]
            if copied[k % 2] is not None:
                # The copy was queued behind the GPU's earlier work: the host runs at most two
                # batches ahead of the device, which bounds what waits in pinned memory.
                copied[k % 2].synchronize()
            torch.index_select(self.images, 0, idx, out=buf)
            # On the CPU `to` returns the buffer itself: safe, as the caller converts it to float
            # before it asks for the next batch.
            x = buf.to(self.device, non_blocking=pinned)
            if pinned:
                copied[k % 2] = torch.cuda.Event()
                copied[k % 2].record()
            yield sl, idx_dev, x

    def close(self) -> None:
        """Nothing to stop: the split is in memory (StreamLoader reads ahead)."""

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images as normalised float, labels) for batches start, start+1, ... of `epoch`."""
        order = offsets = flips = centres = None
        if self.train:
            order, offsets, flips, centres = self._epoch_draws(epoch)
        index_batches = self._index_batches(order, start)
        if self.host:
            gathered = self._host_gather(index_batches)
        else:
            gathered = ((sl, idx_dev, self.images[idx_dev]) for sl, _, idx_dev in index_batches)
        for sl, idx_dev, x_u8 in gathered:
            x = x_u8.float().div_(255)
            if self.augment:
                x = crop_and_flip(x, offsets[sl], flips[sl], self.pad)
            x = (x - self.mean) / self.std
            if self.cutout:
                x = cut_out(x, centres[sl], self.cutout)
            yield x.to(self.dtype), self.labels[idx_dev]


def cut_out(x: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): a size x size square around each image's centre (row,
    column) set to 0, the dataset mean after normalisation; squares may reach past the border."""
    h, w = x.shape[-2:]
    top_left = centres - size // 2
    rows = torch.arange(h, device=x.device)[None] - top_left[:, :1]
    cols = torch.arange(w, device=x.device)[None] - top_left[:, 1:]
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
    return x.masked_fill(inside[:, None], 0.0)
