"""The backward of the pooled head's pooling on a GPU (kernels/window_pool.py): z's gradient, and
in the same pass over z the boundary norm the unit passes on.

`_shares` writes each window's share of its gradient (a tensor the size of the pooled map);
`_spread_runs` walks z in runs of pixels, as the boundary norm's `_apply` does, and writes each
pixel's gradient, masked by the block's last ReLU where z is its output, and, where asked, z's
boundary norm from the statistics the forward measured, over z: one read of z, one or two writes.
"""
from __future__ import annotations

import torch

from ffpipe.kernels import tl, triton
from ffpipe.kernels.rounding import rounded

TILE = 4096  # elements of z per program step (pixels x channels)


def spread(grad_pooled: torch.Tensor, z: torch.Tensor, masked: bool, row_stats=None) -> torch.Tensor:
    """The pooling's gradient in z's shape and channels_last format: each window's gradient over
    its area (torch's division: in the gradient's dtype for equal windows, as autograd's mean
    makes it, else in fp32) summed over the windows of each pixel, and with `masked` zero where z
    is not positive (the ReLU's backward). Two kernels: one writes every window's share (a tensor
    the size of the pooled map), one walks z in runs of pixels, as the boundary norm's `_apply`
    does, reading z once and writing the gradient once. With `row_stats` (each sample's mean and
    rstd) it then writes z's boundary norm over z, the values `_apply` would write: only for a z
    nothing reads after this."""
    n, c, h, w = z.shape
    out_h, out_w = grad_pooled.shape[-2:]
    equal = h % out_h == 0 and w % out_w == 0
    shares = torch.empty(n, out_h, out_w, c, device=z.device, dtype=torch.float32)
    _shares[(n, out_h * out_w)](grad_pooled, shares, *grad_pooled.stride(), h, w, c, out_h, out_w,
                                EQUAL=equal, BLOCK_C=min(triton.next_power_of_2(c), 1024))
    out = torch.empty_like(z, memory_format=torch.channels_last)
    mean_R, rstd_R = (shares, shares) if row_stats is None else row_stats  # unread without NORM
    block_c = min(triton.next_power_of_2(c), TILE)
    block_p = TILE // block_c
    _spread_runs[(n, triton.cdiv(h * w, block_p), triton.cdiv(c, block_c))](
        shares, z, out, mean_R, rstd_R, h, w, c, out_h, out_w, MASKED=masked, NORM=row_stats is not None,
        EQUAL=equal, BLOCK_P=block_p, BLOCK_C=block_c)
    return out


if triton is not None:
    @triton.jit
    def _shares(g_ptr, out_ptr, s_n, s_c, s_h, s_w, H, W, C, OH, OW, EQUAL: tl.constexpr, BLOCK_C: tl.constexpr):
        # One program per (sample, window): each channel's share of the window's gradient (the
        # gradient over the window's area), fp32. Equal windows: divided and rounded in the
        # gradient's dtype, as autograd's mean backward does; else divided in fp32, as a pixel
        # sums several windows' shares.
        n, win = tl.program_id(0), tl.program_id(1)
        i, j = win // OW, win % OW
        rows = ((i + 1) * H + OH - 1) // OH - i * H // OH
        cols = ((j + 1) * W + OW - 1) // OW - j * W // OW
        g_ij = g_ptr + n.to(tl.int64) * s_n + i * s_h + j * s_w
        for cb in range(0, C, BLOCK_C):
            cs = cb + tl.arange(0, BLOCK_C)
            c_ok = cs < C
            g = tl.load(g_ij + cs * s_c, mask=c_ok, other=0.0)
            share = tl.math.div_rn(g.to(tl.float32), (rows * cols).to(tl.float32))
            if EQUAL:
                share = rounded(share, g.dtype)
            tl.store(out_ptr + (n.to(tl.int64) * OH * OW + win) * C + cs, share, mask=c_ok)

    @triton.jit
    def _spread_runs(s_ptr, z_ptr, out_ptr, mean_ptr, rstd_ptr, H, W, C, OH, OW, MASKED: tl.constexpr,
                     NORM: tl.constexpr, EQUAL: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        # One program per (sample, run of BLOCK_P pixels, block of channels): each pixel gets the
        # share of the window that owns it, plus the window above's and the one to the left's
        # (and the one above-left's) where they overlap it; zero where z <= 0 when MASKED
        # (threshold_backward's rule, so NaNs pass as in torch). NORM: then z's boundary norm,
        # (z - mean) * rstd as row_norm's `_apply` computes it, over z (each program writes only
        # the elements it has read).
        n, pb, cb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        ps = pb * BLOCK_P + tl.arange(0, BLOCK_P)
        cs = cb * BLOCK_C + tl.arange(0, BLOCK_C)
        ok = (ps < H * W)[:, None] & (cs < C)[None, :]
        h, w = ps // W, ps % W
        i, j = ((h + 1) * OH - 1) // H, ((w + 1) * OW - 1) // W  # the window whose part holds it
        rows = s_ptr + n.to(tl.int64) * OH * OW * C + cs[None, :]
        out = tl.load(rows + ((i * OW + j) * C)[:, None], mask=ok, other=0.0)
        if not EQUAL:
            up = ((h < (i * H + OH - 1) // OH) & (i > 0))[:, None]
            left = ((w < (j * W + OW - 1) // OW) & (j > 0))[:, None]
            out += tl.load(rows + (((i - 1) * OW + j) * C)[:, None], mask=ok & up, other=0.0)
            out += tl.load(rows + ((i * OW + j - 1) * C)[:, None], mask=ok & left, other=0.0)
            out += tl.load(rows + (((i - 1) * OW + j - 1) * C)[:, None], mask=ok & up & left, other=0.0)
        offs = n.to(tl.int64) * H * W * C + ps.to(tl.int64)[:, None] * C + cs[None, :]
        if MASKED or NORM:
            z = tl.load(z_ptr + offs, mask=ok, other=0.0)
        if MASKED:
            out = tl.where(z <= 0, 0.0, out)
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=ok)
        if NORM:
            normed = (z.to(tl.float32) - tl.load(mean_ptr + n)) * tl.load(rstd_ptr + n)
            tl.store(z_ptr + offs, normed.to(z_ptr.dtype.element_ty), mask=ok)
