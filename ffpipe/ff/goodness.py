"""Goodness heads and local losses: pure functions of tensors, nothing else.

A unit's output z (B x C x H x W, or B x D for an MLP) goes through an auxiliary convolution with
one output channel per class; the goodness of class c is the mean over H x W of the squared
activation of channel c. One forward pass gives the positive (true class) and every negative.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOG_EPS = 1e-6


class GoodnessHead(nn.Module):
    """Auxiliary conv (or linear, for flat features) mapping a unit's output to class goodness."""

    def __init__(self, in_channels: int, num_classes: int, kernel_size: int = 1, flat: bool = False):
        super().__init__()
        self.flat = flat
        if flat:
            self.proj = nn.Linear(in_channels, num_classes)
        else:
            self.proj = nn.Conv2d(in_channels, num_classes, kernel_size, padding=kernel_size // 2)

    def forward(self, z: torch.Tensor, kind: str = "mean_square") -> torch.Tensor:
        return goodness(self.proj(z), kind)


def goodness(a: torch.Tensor, kind: str = "mean_square") -> torch.Tensor:
    """Per-class goodness g_BC from head activations (B x C x H x W, or B x C).

    'mean_square' is the paper's: mean over H x W of a^2 (computed in fp32: squares overflow
    bf16's precision first). 'log_mean_square' is its log, so the logits scale with log of the
    activations rather than their square: a unit whose activations grow cannot blow up its loss.
    """
    a = a.float()
    g_BC = a.pow(2) if a.dim() == 2 else a.pow(2).mean(dim=(2, 3))
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
    logits = g_BC + margin * (1.0 - F.one_hot(y_B, g_BC.shape[1]).to(g_BC.dtype))
    return F.cross_entropy(logits / temperature, y_B)


def vote_probs(g_BC: torch.Tensor, temperature: float) -> torch.Tensor:
    """One unit's vote: softmax of goodness (the margin is a training device, not part of it)."""
    return torch.softmax(g_BC.float() / temperature, dim=1)


def normalize_output(z: torch.Tensor) -> torch.Tensor:
    """Layer norm without affine over every dim but the batch: what a unit passes on.

    It removes the scale (and so the goodness) of this unit from the next unit's input, which
    must find its own evidence for the class.
    """
    return F.layer_norm(z, z.shape[1:])
