"""The pooled head's window mean on a GPU, with fewer passes over a unit's output.

Per step an SFF unit does three things to its output z that BP does not: the pooled head's mean
over windows (a read of z), the boundary norm (a read for its statistics, then a read and a write)
and, in the backward, the pooling's gradient, which autograd spreads over a new z-sized tensor
and copies into z's layout (a write, then a read and a write) before the block's last ReLU masks
it (two reads, a write). Here, for a channels_last z on a GPU Triton compiles for:
- forward: one kernel reads z once and writes both the window sums and each window's mean and
  squared-deviation sum, which become the boundary norm's per-sample statistics (Chan's
  combination, kernels/row_norm.py); the boundary then only reads z once more and writes;
- backward: one kernel writes each window's gradient over its pixels, and when z is a LeanReLU's
  output, masked by it (one read of z, one write); that ReLU passes it on unchanged
  (kernels/relu.py, `premasked`).
The backward's values are the plain path's bit for bit (the same division, by torch, and the same
mask); the forward's up to fp32 summation order. Elsewhere (the CPU, NCHW maps) the plain path
runs: on the CPU a broadcast-and-mask in torch took twice the plain path's time.
"""
from __future__ import annotations

import torch
from torch.autograd import Function

from ffpipe.kernels import row_norm, tl, triton, triton_runs
from ffpipe.kernels.layout import is_nhwc
from ffpipe.kernels.relu import lean_relu_node

TILE = 4096  # elements of z per program step (pixels x channels)


def window_mean(z: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Mean over (H/out_h) x (W/out_w) windows, as a reduction over a view in z's own memory
    format. The same numbers as adaptive pooling for sides that divide, and on an H200 (bf16,
    channels_last, 2026-11-28) forward and backward took 0.79 ms where adaptive pooling took
    1.01 ms (256 x 256 x 56 x 56 -> 4 x 4) and 0.54 ms against 1.05 ms (2048 x 64 x 32 x 32):
    torch's channels_last adaptive-pooling kernels are slow, its reductions are not."""
    n, c, h, w = z.shape
    if is_nhwc(z):
        windows = z.permute(0, 2, 3, 1).reshape(n, out_h, h // out_h, out_w, w // out_w, c)
        return windows.mean(dim=(2, 4)).permute(0, 3, 1, 2)
    return z.reshape(n, c, out_h, h // out_h, out_w, w // out_w).mean(dim=(3, 5))


def pool_windows(z: torch.Tensor, out_h: int, out_w: int):
    """(window means of z, z's per-sample (mean, rstd) where the kernels ran, else None)."""
    if not fuses(z):
        return window_mean(z, out_h, out_w), None
    if torch.is_grad_enabled() and z.requires_grad:
        pooled, stats = _WindowMean.apply(z, out_h, out_w, lean_relu_node(z))
        return pooled, (stats[0], stats[1])
    return fused_forward(z, out_h, out_w)


def fuses(z: torch.Tensor) -> bool:
    """Whether the one-read forward runs: a channels_last CUDA map on a device Triton compiles for."""
    return triton_runs(z) and z.dim() == 4 and is_nhwc(z)


class _WindowMean(Function):
    @staticmethod
    def forward(ctx, z, out_h, out_w, relu):
        ctx.relu = relu
        ctx.save_for_backward(z)
        pooled, (mean_R, rstd_R) = fused_forward(z, out_h, out_w)
        stats = torch.stack((mean_R, rstd_R))
        ctx.mark_non_differentiable(stats)
        return pooled, stats

    @staticmethod
    def backward(ctx, grad_pooled, _grad_stats):
        (z,) = ctx.saved_tensors
        masked = ctx.relu is not None
        grad = spread(grad_pooled, z, masked)
        if masked:  # the ReLU checks that this very tensor, unchanged, is what reaches it
            ctx.relu.premasked = (grad, grad._version)
        ctx.relu = None
        return grad, None, None, None


def spread(grad_pooled: torch.Tensor, z: torch.Tensor, masked: bool) -> torch.Tensor:
    """The window mean's gradient in z's shape and channels_last format: each window's gradient
    over its area (torch's division, as in autograd's mean backward) on each of its pixels, and
    with `masked` zero where z is not positive (the ReLU's backward), in one pass."""
    n, c, h, w = z.shape
    out_h, out_w = grad_pooled.shape[-2:]
    kh, kw = h // out_h, w // out_w
    per_window = (grad_pooled / (kh * kw)).permute(0, 2, 3, 1).contiguous()  # N x OH x OW x C
    out = torch.empty_like(z, memory_format=torch.channels_last)
    block_c, block_p = _blocks(c, kh * kw)
    _spread_window[(n, out_h * out_w)](per_window, z, out, w, c, kh, kw, out_w, MASKED=masked,
                                       BLOCK_P=block_p, BLOCK_C=block_c)
    return out


def _blocks(channels: int, pixels: int) -> tuple[int, int]:
    """A program step's tile: all channels up to TILE, and as many of the window's pixels as fit."""
    block_c = min(triton.next_power_of_2(channels), TILE)
    return block_c, max(1, min(triton.next_power_of_2(pixels), TILE // block_c))


if triton is not None:
    @triton.jit
    def _window_terms(z_ptr, sums_ptr, mean_ptr, m2_ptr, W, C, KH, KW, OW,
                      BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        # One program per (sample, window): the window's channel sums, and its count, mean and
        # squared-deviation sum (Welford's terms, combined block by block as Chan's) in fp32.
        n, win = tl.program_id(0), tl.program_id(1)
        windows = tl.num_programs(1)
        row, col = win // OW, win % OW
        base = z_ptr + n.to(tl.int64) * (windows * KH * KW * C)
        count = tl.zeros((), tl.float32)
        mean = tl.zeros((), tl.float32)
        m2 = tl.zeros((), tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            c_ok = cs < C
            acc = tl.zeros((BLOCK_C,), tl.float32)
            for p0 in range(0, KH * KW, BLOCK_P):
                ps = p0 + tl.arange(0, BLOCK_P)
                p_ok = ps < KH * KW
                pixel = (row * KH + ps // KW) * W + col * KW + ps % KW
                ok = p_ok[:, None] & c_ok[None, :]
                x = tl.load(base + pixel.to(tl.int64)[:, None] * C + cs[None, :], mask=ok, other=0.0)
                x = x.to(tl.float32)
                acc += tl.sum(x, axis=0)
                n_b = tl.sum(tl.sum(ok.to(tl.float32), axis=1), axis=0)
                mean_b = tl.sum(tl.sum(x, axis=1), axis=0) / n_b
                dev = tl.where(ok, x - mean_b, 0.0)
                m2_b = tl.sum(tl.sum(dev * dev, axis=1), axis=0)
                total = count + n_b
                delta = mean_b - mean
                mean = mean + delta * n_b / total
                m2 = m2 + m2_b + delta * delta * count * n_b / total
                count = total
            tl.store(sums_ptr + (n.to(tl.int64) * windows + win) * C + cs, acc, mask=c_ok)
        tl.store(mean_ptr + n * windows + win, mean)
        tl.store(m2_ptr + n * windows + win, m2)

    @triton.jit
    def _spread_window(g_ptr, z_ptr, out_ptr, W, C, KH, KW, OW, MASKED: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        # One program per (sample, window): the window's gradient (N x OH x OW x C, already over
        # its area) written over its pixels, zero where z <= 0 when MASKED (threshold_backward's
        # rule, so NaNs pass as in torch).
        n, win = tl.program_id(0), tl.program_id(1)
        windows = tl.num_programs(1)
        row, col = win // OW, win % OW
        base = n.to(tl.int64) * (windows * KH * KW * C)
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            c_ok = cs < C
            g = tl.load(g_ptr + (n.to(tl.int64) * windows + win) * C + cs, mask=c_ok, other=0.0)
            for p0 in range(0, KH * KW, BLOCK_P):
                ps = p0 + tl.arange(0, BLOCK_P)
                pixel = (row * KH + ps // KW) * W + col * KW + ps % KW
                ok = (ps < KH * KW)[:, None] & c_ok[None, :]
                offs = base + pixel.to(tl.int64)[:, None] * C + cs[None, :]
                out = tl.broadcast_to(g[None, :], (BLOCK_P, BLOCK_C))
                if MASKED:
                    z = tl.load(z_ptr + offs, mask=ok, other=0.0)
                    out = tl.where(z <= 0, tl.zeros_like(out), out)
                tl.store(out_ptr + offs, out, mask=ok)


def fused_forward(z: torch.Tensor, out_h: int, out_w: int):
    """(window means in z's dtype and format, (mean_R, rstd_R) of each sample) from one read of a
    channels_last z by `_window_terms`."""
    n, c, h, w = z.shape
    kh, kw = h // out_h, w // out_w
    windows = out_h * out_w
    sums = torch.empty(n, out_h, out_w, c, device=z.device, dtype=torch.float32)
    mean_RK = torch.empty(n, windows, device=z.device, dtype=torch.float32)
    m2_RK = torch.empty_like(mean_RK)
    block_c, block_p = _blocks(c, kh * kw)
    _window_terms[(n, windows)](z, sums, mean_RK, m2_RK, w, c, kh, kw, out_w, BLOCK_P=block_p, BLOCK_C=block_c)
    pooled = (sums / (kh * kw)).to(z.dtype).permute(0, 3, 1, 2)
    return pooled, row_norm.combine(mean_RK, m2_RK, float(kh * kw * c), c * h * w)
