"""A batch of decoded images of different sizes to one batch of square crops, resized with the
antialiased bilinear filter of torch's `interpolate(..., antialias=True)` (PIL's) and mirrored
where asked: one Triton kernel for the whole batch.

The stream's GPU decoder made each batch's crops with a few torch calls per image from Python
(a slice, a copy into a padded tensor, and the matrix products of data/stream/resize.py for the
batch). Those calls hold the GIL: one thread made 6,666 img/s of 224 px crops while nvJPEG alone
decodes 18,712 img/s (H100, 2026-12-05, .devdata/decode_probe.py). Here the images are joined
into one flat uint8 tensor (one `torch.cat`), each image's place, size, crop box and mirror go to
the device as one small table, and one kernel writes every output pixel: for output pixel (y, x)
of image b it sums weight_y * weight_x * pixel over the filter's taps inside the crop, the
weights those of interpolate (the same centres, support and normalisation), so the values agree
with it up to fp32 summation order.

Only on a device Triton compiles for (kernels.triton_runs); elsewhere the crops are sliced and
resized by data/stream/resize.py, which is the same filter.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ffpipe.kernels import tl, triton

BLOCK = 1024  # output pixels per program
# per image, in this order (int64): where its pixels start in the flat tensor, its height and
# width, its crop's top, left, height and width, and 1 where the crop is mirrored left-right
FIELDS = 8


if triton is not None:
    @triton.jit
    def _taps(out_idx, crop_len, size):
        """An axis's filter: each output index's first input tap (inside the crop), the centre and
        support in crop pixels, and how many taps any output of this axis needs at most."""
        scale = crop_len.to(tl.float32) / size
        support = tl.maximum(scale, 1.0)
        centre = (out_idx.to(tl.float32) + 0.5) * scale
        first = tl.maximum((centre - support + 0.5).to(tl.int32), 0)
        return first, centre, support, (2.0 * support).to(tl.int32) + 2

    @triton.jit
    def _weight(tap, centre, support, crop_len):
        """The triangle filter's weight of input pixel `tap`; zero past the crop's end."""
        w = tl.maximum(1.0 - tl.abs((tap.to(tl.float32) + 0.5 - centre) / support), 0.0)
        return tl.where(tap < crop_len, w, 0.0)

    @triton.jit
    def _crop_resize(src_ptr, table_ptr, out_ptr, size, FIELDS: tl.constexpr, BLOCK: tl.constexpr):
        b, channel, block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        row = table_ptr + b * FIELDS
        start, height, width = tl.load(row), tl.load(row + 1), tl.load(row + 2)
        top, left = tl.load(row + 3), tl.load(row + 4)
        crop_h, crop_w, mirror = tl.load(row + 5), tl.load(row + 6), tl.load(row + 7)
        pixel = block * BLOCK + tl.arange(0, BLOCK)
        inside = pixel < size * size
        oy = pixel // size
        ox = pixel % size
        ox_in = tl.where(mirror != 0, size - 1 - ox, ox)  # a mirrored crop reads its columns backwards
        first_y, centre_y, support_y, taps_y = _taps(oy, crop_h, size)
        first_x, centre_x, support_x, taps_x = _taps(ox_in, crop_w, size)
        plane = src_ptr + start + channel * height * width + top * width + left
        total = tl.zeros((BLOCK,), dtype=tl.float32)
        sum_y = tl.zeros((BLOCK,), dtype=tl.float32)
        sum_x = tl.zeros((BLOCK,), dtype=tl.float32)
        for tx in range(0, taps_x):
            sum_x += _weight(first_x + tx, centre_x, support_x, crop_w)
        for ty in range(0, taps_y):
            iy = first_y + ty
            wy = _weight(iy, centre_y, support_y, crop_h)
            sum_y += wy
            line = tl.zeros((BLOCK,), dtype=tl.float32)
            for tx in range(0, taps_x):
                ix = first_x + tx
                wx = _weight(ix, centre_x, support_x, crop_w)
                value = tl.load(plane + iy.to(tl.int64) * width + ix, mask=inside & (wy > 0) & (wx > 0), other=0)
                line += wx * value.to(tl.float32)
            total += wy * line
        result = total / tl.where(inside, sum_y * sum_x, 1.0)  # (pixels past the end: no taps)
        out = out_ptr + (b * 3 + channel).to(tl.int64) * size * size + pixel
        tl.store(out, result, mask=inside)


def image_table(images: Sequence[torch.Tensor], boxes: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """The kernel's table (N x FIELDS int64) of images joined in order into one flat tensor."""
    shapes = np.array([img.shape for img in images], dtype=np.int64).reshape(len(images), 3)
    sizes = shapes.prod(1)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return np.column_stack([starts, shapes[:, 1], shapes[:, 2], np.asarray(boxes, dtype=np.int64).reshape(-1, 4),
                            np.asarray(mirror, dtype=np.int64)])


def crop_resize(images: Sequence[torch.Tensor], boxes: np.ndarray, mirror: np.ndarray, size: int) -> torch.Tensor:
    """N x 3 x size x size fp32 (0-255) from N RGB uint8 images (3 x h x w, contiguous) on one
    device Triton runs on: image i's crop boxes[i] = (top, left, height, width), resized and,
    where mirror[i], mirrored left-right."""
    first = images[0]
    flat = torch.cat([img.reshape(-1) for img in images])
    table = torch.from_numpy(image_table(images, boxes, mirror))
    if first.is_cuda:  # queued behind the decode on this stream, not waited for (pageable would wait)
        table = table.pin_memory().to(first.device, non_blocking=True)
    out = torch.empty((len(images), 3, size, size), device=first.device)
    grid = (len(images), 3, triton.cdiv(size * size, BLOCK))
    _crop_resize[grid](flat, table, out, size, FIELDS=FIELDS, BLOCK=BLOCK)
    return out
