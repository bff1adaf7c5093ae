"""Where each streamed image is cropped: ImageNet's training crop (a random-resized crop, then a
coin for the mirror) and its evaluation crop (the centre square that "resize to 256, crop 224"
keeps), as integer boxes in the image's own pixels.

The random numbers are drawn per batch from (seed, epoch, batch) before any image is decoded, so
a crop depends on its row's place in the stream and its image's size only: every backend, every
replica and a resumed run crop each image the same way, whichever decoder read it.
"""
from __future__ import annotations

import math

import numpy as np

SCALE = (0.08, 1.0)              # share of the image's area a training crop covers
RATIO = (3 / 4, 4 / 3)           # its aspect ratio (width / height), drawn on a log scale
ATTEMPTS = 10                    # tries at a crop that fits before falling back to the centre
EVAL_CROP = 224 / 256            # the evaluation crop's side over the image's shorter side
# per row: (area, ratio) per attempt, then top, left, the mirror's coin, the cutout's centre (y, x)
TOP, LEFT, MIRROR, CUT = 2 * ATTEMPTS, 2 * ATTEMPTS + 1, 2 * ATTEMPTS + 2, 2 * ATTEMPTS + 3
DRAWS = 2 * ATTEMPTS + 5

Box = tuple[int, int, int, int]  # top, left, height, width


def batch_draws(seed: int, epoch: int, batch: int, rows: int) -> np.ndarray:
    """rows x DRAWS uniform numbers in [0, 1) for one batch's crops and mirrors."""
    return np.random.Generator(np.random.PCG64([seed, epoch, batch, 0xC40F])).random((rows, DRAWS))


def train_box(h: int, w: int, draws: np.ndarray) -> Box:
    """torchvision's RandomResizedCrop box (scale 0.08-1, ratio 3/4-4/3) from one row's draws."""
    area = h * w
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    for k in range(ATTEMPTS):
        target = area * (SCALE[0] + (SCALE[1] - SCALE[0]) * draws[2 * k])
        aspect = math.exp(log_lo + (log_hi - log_lo) * draws[2 * k + 1])
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(draws[TOP] * (h - ch + 1))
            left = int(draws[LEFT] * (w - cw + 1))
            return top, left, ch, cw
    # Fallback (as torchvision): the whole image, cut to the nearest allowed ratio, centred.
    if w / h < RATIO[0]:
        cw, ch = w, round(w / RATIO[0])
    elif w / h > RATIO[1]:
        ch, cw = h, round(h * RATIO[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def eval_box(h: int, w: int) -> Box:
    """The centre square that resizing the shorter side to 256 and cropping 224 would keep."""
    side = max(1, round(min(h, w) * EVAL_CROP))
    return (h - side) // 2, (w - side) // 2, side, side


def mirrors(draws: np.ndarray) -> np.ndarray:
    """Which rows are mirrored left-right (a fair coin per row)."""
    return draws[:, MIRROR] < 0.5


def cutout_centres(draws: np.ndarray, side: int) -> np.ndarray:
    """Each row's cutout centre (row, column) in the side x side crop (data.cutout)."""
    return (draws[:, CUT:CUT + 2] * side).astype(np.int64)
