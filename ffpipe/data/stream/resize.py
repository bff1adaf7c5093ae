"""A batch of crops of different sizes resized to one square at once, with the antialiased
bilinear filter of torch's `interpolate(..., antialias=True)` (PIL's), as two matrix products:
the GPU decoder's path where Triton does not run (`crops_resized`; where it does, one kernel
makes the whole batch: kernels/crop_resize.py, checked against this path).

Cropping and resizing image by image is three or four torch calls from Python per image, some
1,000 a batch, and they wait on the GIL. Here each crop is copied into one zero-padded tensor
(one call per image) and the batch is resized as out = Wy @ crop @ Wx^T: row i of Wx holds the
filter's weights for output column i over the crop's columns, zero past the crop's width, built
for the whole batch in a few calls. The weights are interpolate's (the same centres, support
and normalisation), so the values agree with it up to summation order (and TF32, where a run
allows it for matrix products).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ffpipe.kernels import crop_resize, triton_runs

LARGEST = 640  # crops with a longer side are resized one by one (padding to them costs memory)
CHUNK = 64     # crops resized together: bounds the padded fp32 copy (64 x 3 x 640 x 640 x 4 B = 315 MB)


def filter_weights(lengths: torch.Tensor, size: int, padded: int) -> torch.Tensor:
    """N x size x padded fp32: for crops `lengths` long (N,) along one side, each output pixel's
    weights over the input pixels (antialiased bilinear: a triangle as wide as the scale when
    shrinking, bilinear when enlarging; normalised to sum 1 over the crop)."""
    length = lengths.to(torch.float32)[:, None, None]
    scale = length / size
    support = scale.clamp(min=1.0)
    centre = (torch.arange(size, device=lengths.device, dtype=torch.float32)[None, :, None] + 0.5) * scale
    pixel = torch.arange(padded, device=lengths.device, dtype=torch.float32)[None, None, :]
    weights = (1 - ((pixel + 0.5 - centre) / support).abs()).clamp(min=0) * (pixel < length)
    return weights / weights.sum(-1, keepdim=True)


def crops_resized(images: Sequence[torch.Tensor], boxes: Sequence, mirror: np.ndarray, size: int) -> torch.Tensor:
    """N x 3 x size x size fp32 (0-255): image i's crop boxes[i] = (top, left, height, width) of
    N RGB images (3 x h x w, uint8, one device) resized and, where mirror[i], mirrored. One
    Triton kernel for the batch where Triton runs (kernels/crop_resize.py), else the crops sliced
    and resized here."""
    if triton_runs(images[0]):
        return crop_resize.crop_resize(images, np.asarray(boxes), mirror, size)
    crops = [img[:, top:top + ch, left:left + cw] for img, (top, left, ch, cw) in zip(images, boxes)]
    out = resize_crops(crops, size)
    flip = torch.from_numpy(np.asarray(mirror, dtype=bool)).to(out.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def resize_crops(crops: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """N x C x size x size fp32 from N crops (C x h x w, any h, w; uint8 or float) on one device."""
    first = crops[0]
    out = torch.empty((len(crops), first.shape[0], size, size), device=first.device)
    small = [i for i, c in enumerate(crops) if max(c.shape[1:]) <= LARGEST]
    for i, crop in enumerate(crops):
        if max(crop.shape[1:]) > LARGEST:  # rare: a crop of a very large image
            out[i] = F.interpolate(crop[None].float(), size=(size, size), mode="bilinear",
                                   antialias=True, align_corners=False)[0]
    for start in range(0, len(small), CHUNK):
        part = small[start:start + CHUNK]
        resized = _resize_together([crops[i] for i in part], size)
        if part[-1] - part[0] == len(part) - 1:  # consecutive rows: a slice (a list of rows as an
            out[part[0]:part[-1] + 1] = resized  # index would be copied to the GPU from pageable memory)
        else:
            for row, i in enumerate(part):
                out[i] = resized[row]
    return out


def _resize_together(crops: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    heights = [c.shape[1] for c in crops]
    widths = [c.shape[2] for c in crops]
    padded = crops[0].new_zeros((len(crops), crops[0].shape[0], max(heights), max(widths)))
    for i, crop in enumerate(crops):
        padded[i, :, :crop.shape[1], :crop.shape[2]] = crop
    lengths = _on(padded.device, torch.tensor(widths + heights))
    across = filter_weights(lengths[:len(crops)], size, padded.shape[3])
    down = filter_weights(lengths[len(crops):], size, padded.shape[2])
    rows = padded.float() @ across.transpose(1, 2)[:, None]  # N x C x H x size
    return down[:, None] @ rows                               # N x C x size x size


def _on(device: torch.device, small: torch.Tensor) -> torch.Tensor:
    """A small host tensor on the device without waiting for the stream's queued work (a copy from
    pageable memory would: through pinned memory it is queued like the rest)."""
    if device.type != "cuda":
        return small.to(device)
    return small.pin_memory().to(device, non_blocking=True)
