"""Goodness heads, local losses and the boundary norm: pure functions of tensors, nothing else.

A unit's output z (B x C x H x W, or B x D for an MLP) goes through an auxiliary convolution with
one output channel per class; the goodness of class c is the mean over H x W of the squared
activation of channel c. One forward pass gives the positive (true class) and every negative.

These run on every step of every unit, so they are written to touch as little memory as they
can: no fp32 or NCHW copy of a low-precision channels_last tensor, no autograd record for what
is detached anyway (a plain `F.layer_norm` under autocast cost 40% of the step on an H100).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ffpipe.kernels import row_norm, triton_runs, window_pool
from ffpipe.kernels.layout import is_nhwc

LOG_EPS = 1e-6
TENSOR_CORE_CHANNELS = 8


class GoodnessHead(nn.Module):
    """Auxiliary conv (or linear, for flat features) mapping a unit's output to class goodness.

    `pool` > 0 (algo.head = 'pooled'): the output is average-pooled to at most pool x pool first,
    so the projection's cost no longer grows with the map's area (with 1,000 classes the
    full-resolution projection of a 56 x 56 map costs as much as a layer of the network).
    `depth` conv3x3+BN+ReLU layers on the pooled map come before the projection: DGL's auxiliary
    network (Belilovsky et al. 2019), which gives early units a head strong enough that they need
    not make every pixel class-readable themselves."""

    def __init__(self, in_channels: int, num_classes: int, kernel_size: int = 1, flat: bool = False,
                 pool: int = 0, depth: int = 0):
        super().__init__()
        self.flat = flat
        self.pool = pool
        self.num_classes = num_classes
        self.layers = nn.Sequential(*(layer for _ in range(0 if flat else depth) for layer in (
            nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False), nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True))))
        if flat:
            self.proj = nn.Linear(in_channels, num_classes)
        else:
            self.proj = nn.Conv2d(in_channels, num_classes, kernel_size, padding=kernel_size // 2)

    def forward(self, z: torch.Tensor, kind: str = "mean_square") -> torch.Tensor:
        return self.score(self.pool_input(z)[0], kind)

    def pool_input(self, z: torch.Tensor):
        """(the map the head reads: z, or z pooled; z's boundary-norm statistics where the pooling
        gave them from the same read, else None)."""
        if self.pool and not self.flat:
            return pool_and_stats(z, self.pool)
        return z, None

    def score(self, z: torch.Tensor, kind: str = "mean_square") -> torch.Tensor:
        """Goodness from what `pool_input` gave."""
        return goodness(self.activations(z), kind, self.num_classes)

    def activations(self, z: torch.Tensor) -> torch.Tensor:
        """The activations whose goodness `score` gives (on a GPU with padding classes)."""
        return self._project(self.layers(z))

    def _project(self, z: torch.Tensor) -> torch.Tensor:
        """The head's activations; on a GPU with zero channels added up to a multiple of 8.

        Tensor-core convolution kernels want output channels in multiples of 8: with 10 classes
        cuDNN fell back to an older, slower kernel (H200, 2026-11-28). The padded weights and
        bias are zeros made on the fly, so their channels are zero and their goodness is
        dropped; the parameters keep their shape and nothing else changes.
        """
        pad = -self.num_classes % TENSOR_CORE_CHANNELS
        if self.flat or pad == 0 or z.device.type != "cuda":
            return self.proj(z)
        weight = F.pad(self.proj.weight, (0, 0, 0, 0, 0, 0, 0, pad))
        bias = F.pad(self.proj.bias, (0, pad))
        return self.proj._conv_forward(z, weight.contiguous(memory_format=torch.channels_last), bias)


# CUDA's adaptive average pooling asserts fewer than 2**31 input elements (torch 2.11, H200): a
# ResNet-50 block's 256 x 56 x 56 output passes that at batch 2,731.
_POOL_ELEMENTS = 2**31 - 1


def pool_at_most(z: torch.Tensor, side: int) -> torch.Tensor:
    """Maps average-pooled to at most side x side (as they are where they are that small)."""
    return pool_and_stats(z, side)[0]


def pool_and_stats(z: torch.Tensor, side: int):
    """(z pooled to at most side x side; z's per-sample (mean, rstd) where the pooling's one read
    on a GPU gave them (kernels/window_pool.py), else None)."""
    if z.shape[-2] <= side and z.shape[-1] <= side:
        return z, None
    size = (min(side, z.shape[-2]), min(side, z.shape[-1]))
    if window_pool.fuses(z):
        return window_pool.pool_windows(z, *size)
    return pool_to(z, size), None


def pool_to(z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Average pooling to `size`: a mean over equal windows where the sides divide, else adaptive
    pooling (in slices of the batch where the whole is too large for CUDA's kernel)."""
    (h, w), (out_h, out_w) = z.shape[-2:], size
    if z.dim() == 4 and h % out_h == 0 and w % out_w == 0:
        return window_mean(z, out_h, out_w)
    per_sample = max(1, z[0].numel())
    if z.numel() <= _POOL_ELEMENTS:
        return F.adaptive_avg_pool2d(z, size)
    rows = max(1, _POOL_ELEMENTS // per_sample)
    return torch.cat([F.adaptive_avg_pool2d(part, size) for part in z.split(rows)])


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


class _MeanSquare(torch.autograd.Function):
    """g_BC = mean over H x W of a^2, with fp32 sums, keeping only `a` itself for the backward.

    Autograd's version of `a.float().pow(2).mean((2, 3))` materialises an fp32 copy of `a`, keeps
    it alive until the backward and writes two more fp32 tensors there. fp32 inputs take exactly
    those operations (so CPU runs are bit-identical to the plain formula); low-precision inputs
    are read once by an fp32-accumulating norm and get a gradient of their own dtype.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a)
        return _mean_square_values(a)

    @staticmethod
    def backward(ctx, grad_BC: torch.Tensor) -> torch.Tensor:
        (a,) = ctx.saved_tensors
        hw = a.shape[2] * a.shape[3]
        if a.dtype == torch.float32:  # the same operations, in the same order, as autograd's
            return (grad_BC / hw)[:, :, None, None] * (2 * a)
        return a * (grad_BC * (2.0 / hw)).to(a.dtype)[:, :, None, None]


def _mean_square_values(a: torch.Tensor) -> torch.Tensor:
    if a.dtype == torch.float32:
        return a.pow(2).mean(dim=(2, 3))
    norm_BC = torch.linalg.vector_norm(a, dim=(2, 3), dtype=torch.float32)
    return norm_BC.square() / (a.shape[2] * a.shape[3])


def mean_square(a: torch.Tensor) -> torch.Tensor:
    """Per-class mean of squares over H x W (B x C x H x W -> B x C, fp32); B x C: squares."""
    if a.dim() == 2:
        return a.float().pow(2)
    if not (torch.is_grad_enabled() and a.requires_grad):
        # Nothing to differentiate (evaluation, an exported network): the same operations without
        # the autograd Function, which a TorchScript trace cannot hold.
        return _mean_square_values(a)
    return _MeanSquare.apply(a)


def goodness(a: torch.Tensor, kind: str = "mean_square", num_classes: int | None = None) -> torch.Tensor:
    """Per-class goodness g_BC from head activations (B x C x H x W, or B x C); with
    `num_classes`, of the first that many channels only (the rest is padding).

    'mean_square' is the paper's: mean over H x W of a^2 (summed in fp32: squares overflow
    bf16's precision first). 'log_mean_square' is its log, so the logits scale with log of the
    activations rather than their square: a unit whose activations grow cannot blow up its loss.
    """
    g_BC = mean_square(a)
    if num_classes is not None and num_classes < g_BC.shape[1]:
        g_BC = g_BC[:, :num_classes]
    if kind == "log_mean_square":
        return torch.log(g_BC + LOG_EPS)
    if kind == "normalized_mean_square":
        return g_BC / (g_BC.mean(dim=1, keepdim=True) + LOG_EPS)
    return g_BC


def sff_loss(g_BC: torch.Tensor, y_B: torch.Tensor, margin: float, temperature: float) -> torch.Tensor:
    """Margin log-sum-exp over goodness, averaged over the batch.

    L = logsumexp_c((g_c + m [c != y]) / tau) - g_y / tau. With m = 0, tau = 1 this is softmax
    cross-entropy over goodness; m > 0 asks the true class to beat every other by m.
    """
    classes = torch.arange(g_BC.shape[1], device=g_BC.device)
    # [c != y] by comparison rather than one_hot, which checks label ranges with a host sync
    # on some devices (and so could not be captured in a CUDA graph).
    wrong_BC = (classes[None, :] != y_B[:, None]).to(g_BC.dtype)
    return F.cross_entropy((g_BC + margin * wrong_BC) / temperature, y_B)


def vote_probs(g_BC: torch.Tensor, temperature: float) -> torch.Tensor:
    """One unit's vote: softmax of goodness (the margin is a training device, not part of it)."""
    return torch.softmax(g_BC.float() / temperature, dim=1)


def pending_norm(z: torch.Tensor, head_input: torch.Tensor, row_stats, sole_reader: bool) -> window_pool.PendingNorm:
    """z's boundary norm, made once (`boundary_norm`): where the head's kernels pooled a ReLU's
    output z (`row_stats` given) that nothing but the head reads (`sole_reader`), their backward
    writes it over z in its pass over z; else on reading. Nothing else need keep z for it."""
    pending = window_pool.PendingNorm(z.detach(), row_stats)
    if row_stats is not None:
        window_pool.norm_in_backward(head_input, pending, sole_reader)
    return pending


def boundary_norm(pending: window_pool.PendingNorm) -> torch.Tensor:
    """What `pending_norm` promised: the norm its backward wrote, else normalize_output of z now."""
    normed = pending.normed
    if normed is None:
        normed = normalize_output(pending.z, pending.row_stats)
    pending.z = pending.normed = None
    return normed


@torch.no_grad()
def normalize_output(z: torch.Tensor, row_stats=None) -> torch.Tensor:
    """Layer norm without affine over every dim but the batch: what a unit passes on.

    It removes the scale (and so the goodness) of this unit from the next unit's input, which
    must find its own evidence for the class. The result is detached by construction (no_grad).

    Computed in z's own dtype and memory format, with fp32 statistics: autocast (which would
    upcast the whole tensor) is off; a channels_last tensor is normalised as its NHWC view, in
    which every sample is contiguous, instead of being copied to NCHW and back. On a GPU the
    rows go to row_norm's kernels, which spread a long row over many thread blocks; `row_stats`,
    each sample's (mean, rstd) that the head's pooling measured on the GPU, leave them one pass.
    """
    with torch.autocast(z.device.type, enabled=False):
        nhwc = is_nhwc(z)
        rows = z.permute(0, 2, 3, 1) if nhwc else z
        if row_stats is not None and rows.is_contiguous():
            out = row_norm.normalize_rows(rows.reshape(rows.shape[0], -1), *row_stats).view(rows.shape)
        elif triton_runs(rows) and rows.is_contiguous() and rows[0].numel() >= row_norm.MIN_ROW:
            out = row_norm.layer_norm_rows(rows.reshape(rows.shape[0], -1)).view(rows.shape)
        else:
            out = F.layer_norm(rows, rows.shape[1:])
        return out.permute(0, 3, 1, 2) if nhwc else out
