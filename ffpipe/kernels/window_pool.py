"""The pooled head's average pooling on a GPU, with fewer passes over a unit's output.

Per step an SFF unit does three things to its output z that BP does not: the pooled head's
average pooling (a read of z), the boundary norm (a read for its statistics, then a read and a
write) and, in the backward, the pooling's gradient, which autograd spreads over a new z-sized
tensor (and, for equal windows, copies into z's layout: a read and a write) before the block's
last ReLU masks it (two reads, a write). Here, for a channels_last z on a GPU Triton compiles for,
with samples of more than PLAIN_UP_TO elements (smaller ones are unmeasured):
- forward: one kernel reads z once and writes both the window sums and, for the part of z each
  window owns, its mean and squared-deviation sum (`_window_terms` walks a window in tiles;
  kernels/window_whole.py reads windows that fit a tile whole); those become the boundary norm's
  per-sample statistics (Chan's combination, kernels/row_norm.py);
- backward (kernels/window_spread.py): one small kernel writes each window's share of its
  gradient; one more writes each pixel's gradient, the sum of its windows' shares (at most two a
  side), and when z is a LeanReLU's output, masked by it (one read of z, one write), walking z in
  runs of pixels as the norm does (per-window programs ran at 44-66% of the memory's speed on an
  H100, these made ResNet18's step at 32 px 1.5% faster, ResNet-50's 0.3%, ResNet-152's the
  same); that ReLU passes it on unchanged (kernels/relu.py, `premasked`). Where only the head
  reads z, the same pass then writes the boundary norm over z from the forward's statistics
  (`norm_in_backward`), and the unit passes that on after its backward: z is read twice a step
  in all, where the norm's own pass read it a third time.
Windows are adaptive pooling's (row i: floor(i H / OH) to ceil((i + 1) H / OH)), so sides that
divide get equal windows and, for example, ResNet-152's 14 x 14 maps (36 of its 50 units) the
overlapping ones of torch's adaptive pooling. With equal windows the backward's values are the
plain path's bit for bit (the same division, by torch, and the same mask); otherwise, and in the
forward, they agree up to fp32 summation order. Elsewhere (the CPU, NCHW maps, small samples) the
plain path runs: on the CPU a broadcast-and-mask written in torch ops took twice its time.
"""
from __future__ import annotations

import torch
from torch.autograd import Function

from ffpipe.kernels import row_norm, tl, triton, triton_runs, window_whole
from ffpipe.kernels.layout import is_nhwc
from ffpipe.kernels.relu import lean_relu_node
from ffpipe.kernels.rounding import rounded
from ffpipe.kernels.window_spread import spread

# Samples of up to this many elements keep the plain path (window means by torch's reduction,
# F.layer_norm, autograd's mean backward), which made the faster step there until window_whole's
# kernel. ResNet18 at 32 px, batch 2,048, graphed, SFF img/s by gate, one H100, 2026-12-06: with
# the walked forward only (BP 63,842), 2^15 (the 64 x 32 x 32 maps fused) 64,387; 2^14 (and the
# 128 x 16 x 16 ones) 64,939; 2^13 (and the 256 x 8 x 8 ones) 63,829. With window_whole's (BP
# 64,128): 2^13 67,271, 0 67,342 (the same maps: 512 x 4 x 4 is not pooled); 2^14 66,255 (with 4
# warps). Smaller maps are unmeasured and stay plain. ResNet-50's and -152's maps (100,352
# elements a sample and up) are all fused.
PLAIN_UP_TO = 2**13
# The forward's tile and warps: it keeps three fp32 sums per element of its tile in registers.
# Swept on one H100, 2026-12-06 (python -m ffpipe.bench.head_kernels, forward + backward over
# ResNet-50's four maps): 2,048 / 4 warps 3.85 ms, 1,024 / 2 3.74, 512 / 2 3.73, 4,096 / 8 4.41; the
# step, ResNet-50 at 256: 3,895 -> 3,924 img/s; ResNet18 at 32 px, 2,048: 63,612 -> 64,456.
# (The backward's tile and warps and the norm's apply, swept the same way, moved nothing.)
SUMS_TILE = 1024
SUMS_WARPS = 2


def fuses(z: torch.Tensor) -> bool:
    """Whether the kernels run: a channels_last CUDA map on a device Triton compiles for, with
    samples of more than PLAIN_UP_TO elements."""
    return triton_runs(z) and z.dim() == 4 and is_nhwc(z) and z[0].numel() > PLAIN_UP_TO


def pool_windows(z: torch.Tensor, out_h: int, out_w: int):
    """(z average-pooled to out_h x out_w as adaptive pooling does, in z's dtype and format;
    z's per-sample (mean, rstd), fp32) by the kernels: only where `fuses(z)`."""
    if torch.is_grad_enabled() and z.requires_grad:
        pooled, stats = _WindowMean.apply(z, out_h, out_w, lean_relu_node(z))
        return pooled, (stats[0], stats[1])
    return fused_forward(z, out_h, out_w)


class PendingNorm:
    """z's boundary norm, pending: `z` and its per-sample `row_stats` (mean, rstd) until it is
    made, then `normed`. Given to the pooling's backward (`norm_in_backward`), which writes it
    over z; whoever reads it first otherwise makes it and sets z to None."""

    def __init__(self, z: torch.Tensor, row_stats):
        self.z, self.row_stats, self.normed = z, row_stats, None


def norm_in_backward(pooled: torch.Tensor, pending: PendingNorm, sole_reader: bool) -> None:
    """Where `pooled` is the kernels' pooling, with a gradient, of a LeanReLU's output z that
    nothing else reads (`sole_reader`: the caller knows), its backward writes `pending`'s norm
    over z, in the pass that reads z for its gradient: the unit, which reads the norm after its
    backward, saves a read of z a step, and the norm takes no memory of its own (a copy made
    there would be one more map-sized tensor while z, its gradient and the block's saved maps
    are all alive: 392 MiB more for ResNet-50's first maps at batch 256). Nothing reads z after
    that pass: its ReLU takes the pooling's masked gradient as it is (and raises if it ever gets
    another). Else nothing changes."""
    node = pooled.grad_fn
    if sole_reader and type(node) is _WindowMean._backward_cls and node.relu is not None:
        node.pending = pending


class _WindowMean(Function):
    @staticmethod
    def forward(ctx, z, out_h, out_w, relu):
        ctx.relu = relu
        ctx.save_for_backward(z)
        pooled, stats = fused_forward(z, out_h, out_w)
        ctx.mark_non_differentiable(stats)
        ctx.set_materialize_grads(False)  # no zeros made for the statistics' gradient: a launch
        return pooled, stats

    @staticmethod
    def backward(ctx, grad_pooled, _grad_stats):
        (z,) = ctx.saved_tensors
        if grad_pooled is None:
            return None, None, None, None
        masked = ctx.relu is not None
        pending, ctx.pending = getattr(ctx, "pending", None), None
        over_z = pending is not None and pending.z is not None  # asked, and not made yet
        grad = spread(grad_pooled, z, masked, pending.row_stats if over_z else None)
        if over_z:
            pending.normed, pending.z = z.detach(), None
        if masked:  # the ReLU checks that this very tensor, unchanged, is what reaches it
            ctx.relu.premasked = (grad, grad._version)
            ctx.relu.overwritten = over_z
        ctx.relu = None
        return grad, None, None, None


_OWNED: dict = {}  # (h, w, out_h, out_w, device) -> _owned_areas' tensor


def _owned_areas(h: int, w: int, out_h: int, out_w: int, device: torch.device) -> torch.Tensor:
    """The area of the part each window owns (from its start to the next window's), fp32, OH x OW,
    on the device: the statistics' weights. Kept per map shape, so a step (or its CUDA graph) does
    not rebuild it in a handful of tiny kernels; made by device ops (a CUDA graph can capture
    them), and not kept when made inside a capture (its memory is the graph's). The kernels work
    out each window's own area themselves."""
    key = (h, w, out_h, out_w, device)
    if key not in _OWNED:
        made = (_owned_lengths(h, out_h, device)[:, None] * _owned_lengths(w, out_w, device)[None, :]).float()
        if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            _OWNED[key] = made
        return made
    return _OWNED[key]


def _owned_lengths(size: int, out: int, device) -> torch.Tensor:
    """The length along one side of the part each window owns: from its start to the next one's."""
    starts = torch.arange(out + 1, device=device) * size // out
    return starts[1:] - starts[:-1]


def fused_forward(z: torch.Tensor, out_h: int, out_w: int):
    """(the pooled map in z's dtype and format, each sample's (mean, rstd) as a 2 x N fp32 tensor)
    from one read of a channels_last z: by window_whole's kernel where a whole window fits its
    tile, else by `_window_terms`."""
    n, c, h, w = z.shape
    owned = _owned_areas(h, w, out_h, out_w, z.device)
    pooled = torch.empty(n, out_h, out_w, c, device=z.device, dtype=z.dtype)
    mean_RK = torch.empty(n, out_h * out_w, device=z.device, dtype=torch.float32)
    m2_RK = torch.empty_like(mean_RK)
    whole = window_whole.tile(h, w, c, out_h, out_w)
    if whole:
        window_whole.window_terms(z, pooled, mean_RK, m2_RK, out_h, out_w, whole)
    else:
        block_c, block_p = _blocks(c, (-(-h // out_h) + 1) * (-(-w // out_w) + 1), SUMS_TILE)
        _window_terms[(n, out_h * out_w)](z, pooled, mean_RK, m2_RK, h, w, c, out_h, out_w, BLOCK_P=block_p,
                                          BLOCK_C=block_c, EQUAL=h % out_h == 0 and w % out_w == 0,
                                          num_warps=SUMS_WARPS)
    return pooled.permute(0, 3, 1, 2), row_norm.combine(mean_RK, m2_RK, owned.flatten(), c * h * w, c)


def _blocks(channels: int, pixels: int, tile: int) -> tuple[int, int]:
    """A program step's tile: all channels up to `tile`, and as many of the window's pixels as fit."""
    block_c = min(triton.next_power_of_2(channels), tile)
    return block_c, max(1, min(triton.next_power_of_2(pixels), tile // block_c))


if triton is not None:
    @triton.jit
    def _window_terms(z_ptr, pooled_ptr, mean_ptr, m2_ptr, H, W, C, OH, OW,
                      BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, EQUAL: tl.constexpr):
        # One program per (sample, window): the window's channel means, and the count, mean and
        # squared-deviation sum (fp32) of the part it owns: its rows and columns before the next
        # window's start. Owned parts tile z, so every element counts once in the sample's
        # statistics.
        n, win = tl.program_id(0), tl.program_id(1)
        i, j = win // OW, win % OW
        r0, c0 = i * H // OH, j * W // OW
        kh, kw = ((i + 1) * H + OH - 1) // OH - r0, ((j + 1) * W + OW - 1) // OW - c0
        own_r, own_c = (i + 1) * H // OH, (j + 1) * W // OW
        n_own = ((own_r - r0) * (own_c - c0)).to(tl.float32)
        base = z_ptr + n.to(tl.int64) * H * W * C
        count = tl.zeros((), tl.float32)
        mean = tl.zeros((), tl.float32)
        m2 = tl.zeros((), tl.float32)
        for cb in range(0, C, BLOCK_C):
            cs = cb + tl.arange(0, BLOCK_C)
            c_ok = cs < C
            shift, d_sum, s1_c, s2_c = _shifted_sums(base, r0, c0, kh, kw, own_r, own_c, W, C, cs, c_ok,
                                                     BLOCK_P, BLOCK_C, EQUAL)
            area = (kh * kw).to(tl.float32)  # the window's mean, divided and rounded as torch does
            tl.store(pooled_ptr + (n.to(tl.int64) * OH * OW + win) * C + cs,
                     rounded(tl.math.div_rn(d_sum + area * shift, area), pooled_ptr.dtype.element_ty).to(
                         pooled_ptr.dtype.element_ty), mask=c_ok)
            # this block of channels' owned terms from the shifted sums: a channel's deviations
            # from the block's mean are its shifted values less (mean - shift)
            n_b = n_own * tl.minimum(C - cb, BLOCK_C).to(tl.float32)
            mean_b = tl.sum(tl.where(c_ok, s1_c + n_own * shift, 0.0), axis=0) / n_b
            e = tl.where(c_ok, shift - mean_b, 0.0)
            m2_b = tl.sum(s2_c + 2.0 * e * s1_c + n_own * e * e, axis=0)
            total = count + n_b  # Chan's combination with the blocks before
            delta = mean_b - mean
            mean = mean + delta * n_b / total
            m2 = m2 + m2_b + delta * delta * count * n_b / total
            count = total
        tl.store(mean_ptr + n * OH * OW + win, mean)
        tl.store(m2_ptr + n * OH * OW + win, m2)

    @triton.jit
    def _shifted_sums(base, r0, c0, kh, kw, own_r, own_c, W, C, cs, c_ok,
                      BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, EQUAL: tl.constexpr):
        # Per channel of `cs`: its mean over the window's first tile (the shift, which keeps the
        # squares from cancelling where a mean is large against the spread), and the sums of the
        # shifted values over the window and over its owned part, and of their squares over the
        # owned part. The loop only adds into per-lane sums, summed once at the end: with
        # reductions in the loop (Welford's terms per tile) each load waited for the last tile's
        # reductions, and z was read at an eighth of the memory's speed (H200, 2026-12-05).
        ps = tl.arange(0, BLOCK_P)
        ok = (ps < kh * kw)[:, None] & c_ok[None, :]
        offs = ((r0 + ps // kw) * W + c0 + ps % kw).to(tl.int64)[:, None] * C + cs[None, :]
        first = tl.load(base + offs, mask=ok, other=0.0).to(tl.float32)
        shift = tl.sum(first, axis=0) / tl.minimum(kh * kw, BLOCK_P).to(tl.float32)
        acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
        s1 = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
        s2 = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
        for p0 in range(0, kh * kw, BLOCK_P):
            ps = p0 + tl.arange(0, BLOCK_P)
            h, w = r0 + ps // kw, c0 + ps % kw
            ok = (ps < kh * kw)[:, None] & c_ok[None, :]
            x = tl.load(base + (h * W + w).to(tl.int64)[:, None] * C + cs[None, :], mask=ok, other=0.0)
            d = tl.where(ok, x.to(tl.float32) - shift[None, :], 0.0)
            acc += d
            if EQUAL:  # every pixel of the window is its own
                s2 += d * d
            else:
                d = tl.where(((h < own_r) & (w < own_c))[:, None], d, 0.0)
                s1 += d
                s2 += d * d
        d_sum = tl.sum(acc, axis=0)
        s1_c = d_sum if EQUAL else tl.sum(s1, axis=0)
        return shift, d_sum, s1_c, tl.sum(s2, axis=0)
