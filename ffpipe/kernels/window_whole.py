"""The pooled head's forward for windows that fit one tile: each window read once, into registers.

window_pool's `_window_terms` walks a window in steps of a tile, about a shift taken from a
first load, so that a window of any size is read in bounded registers. Where a whole window (all
its pixels and channels) fits a tile, as on ResNet18's maps at 32 px, it is read once and its
terms taken in two passes over registers instead: the channels' means, then the squared
deviations about them, exactly. A program takes a run of BLOCK_J windows of a window row, so that
small windows (2 x 2 pixels on the 8 x 8 maps) still make a tile's worth of work. Results are
`_window_terms`' up to fp32 summation order.

Measured on one H100, 2026-12-06 (`python -m ffpipe.bench.head_kernels`, forward + backward, ms,
against the walked kernel): 2048 x 64 x 32 x 32 1.086 (1.134), 2048 x 128 x 16 x 16 0.626 (0.727),
2048 x 256 x 8 x 8 0.469 (0.666; the plain path 0.802, so those maps are now fused too). The same
reads in blocks of channels on ResNet-50's maps at 224 px (a window's pixels with 32 to 512 of its
channels a program) were as fast or slower (7 x 7 x 2048: 0.531 against 0.464), so larger windows
keep the walked kernel.
"""
from __future__ import annotations

import torch

from ffpipe.kernels import tl, triton
from ffpipe.kernels.rounding import rounded

TILE = 8192   # elements a program holds (windows x pixels x channels, each padded to a power of 2)
WARPS = 2     # of 1, 2, 4 and 8 (head_kernels on ResNet18's maps) the fastest; the step with 4: 0.9% slower


def tile(h: int, w: int, c: int, out_h: int, out_w: int) -> tuple[int, int, int] | None:
    """(BLOCK_J, BLOCK_P, BLOCK_C) when a whole window fits a tile, else None."""
    block_p = triton.next_power_of_2(_longest(h, out_h) * _longest(w, out_w))
    block_c = triton.next_power_of_2(c)
    if block_p * block_c > TILE:
        return None
    return min(triton.next_power_of_2(out_w), TILE // (block_p * block_c)), block_p, block_c


def _longest(size: int, out: int) -> int:
    """The longest of adaptive pooling's windows along a side."""
    return max(-(-(i + 1) * size // out) - i * size // out for i in range(out))


def window_terms(z: torch.Tensor, pooled, mean_RK, m2_RK, out_h: int, out_w: int, blocks) -> None:
    """Fills pooled (N x OH x OW x C, z's dtype) and each window's owned (mean, m2) from z."""
    n, c, h, w = z.shape
    block_j, block_p, block_c = blocks
    _whole_windows[(n, out_h, triton.cdiv(out_w, block_j))](
        z, pooled, mean_RK, m2_RK, h, w, c, out_h, out_w, BLOCK_J=block_j, BLOCK_P=block_p, BLOCK_C=block_c,
        EQUAL=h % out_h == 0 and w % out_w == 0, num_warps=WARPS)


if triton is not None:
    @triton.jit
    def _whole_windows(z_ptr, pooled_ptr, mean_ptr, m2_ptr, H, W, C, OH, OW, BLOCK_J: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, EQUAL: tl.constexpr):
        # One program per (sample, window row i, run of BLOCK_J windows in it), a tile of
        # (window, pixel, channel). Each window: its channel means (the pooled map), and the mean
        # and squared-deviation sum (fp32) of the part it owns (its rows and columns before the
        # next window's start), as _window_terms writes them.
        n, i, jb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        js = jb * BLOCK_J + tl.arange(0, BLOCK_J)
        ps = tl.arange(0, BLOCK_P)[None, :]
        cs = tl.arange(0, BLOCK_C)
        r0 = i * H // OH
        kh = ((i + 1) * H + OH - 1) // OH - r0
        c0 = js * W // OW
        kw = ((js + 1) * W + OW - 1) // OW - c0
        h, w = r0 + ps // kw[:, None], c0[:, None] + ps % kw[:, None]  # (window, pixel)
        ok = ((js[:, None] < OW) & (ps < kh * kw[:, None]))[:, :, None] & (cs < C)[None, None, :]
        base = z_ptr + n.to(tl.int64) * H * W * C
        x = tl.load(base + (h * W + w).to(tl.int64)[:, :, None] * C + cs[None, None, :], mask=ok,
                    other=0.0).to(tl.float32)
        area = (kh * kw).to(tl.float32)
        sums = tl.sum(x, axis=1)  # (window, channel)
        out = (n.to(tl.int64) * OH * OW + i * OW + js)[:, None] * C + cs[None, :]
        out_ok = (js < OW)[:, None] & (cs < C)[None, :]
        pooled = rounded(tl.math.div_rn(sums, area[:, None]), pooled_ptr.dtype.element_ty)
        tl.store(pooled_ptr + out, pooled.to(pooled_ptr.dtype.element_ty), mask=out_ok)
        if EQUAL:  # every pixel of a window is its own
            own, n_own, s1 = ok, area, sums
        else:
            own_r, own_c = (i + 1) * H // OH, (js + 1) * W // OW
            own = ok & ((h < own_r) & (w < own_c[:, None]))[:, :, None]
            n_own = ((own_r - r0) * (own_c - c0)).to(tl.float32)
            s1 = tl.sum(tl.where(own, x, 0.0), axis=1)
        mean, m2 = _owned_terms(x, own, n_own, s1, out_ok, C)
        terms = n * OH * OW + i * OW + js
        tl.store(mean_ptr + terms, mean, mask=js < OW)
        tl.store(m2_ptr + terms, m2, mask=js < OW)

    @triton.jit
    def _owned_terms(x, own, n_own, s1, out_ok, C):
        # Each window's mean and squared-deviation sum over its owned elements (own), from its
        # channels' owned sums s1: the deviations about each channel's mean, plus the channel
        # means' about the window's (two passes over registers: nothing cancels)
        m_c = s1 / n_own[:, None]
        d = tl.where(own, x - m_c[:, None, :], 0.0)
        within = tl.sum(tl.sum(d * d, axis=2), axis=1)
        mean = tl.sum(tl.where(out_ok, s1, 0.0), axis=1) / (n_own * C)
        e = tl.where(out_ok, m_c - mean[:, None], 0.0)
        return mean, within + n_own * tl.sum(e * e, axis=1)
