"""Information-keeping terms beside a unit's class loss (algo.aux), each local to its unit.

Greedy local learning pushes early units to make every pixel linearly class-readable and to drop
what later units would need ("information collapse", InfoPro, Wang et al. ICLR 2021). Two known
remedies, each a small module of the unit that adds a loss on the unit's own output:

- similarity (PredSim, Nøkland & Eidnes 2019, arXiv 1901.06656): a 3x3 conv of the output,
  average-pooled to at most AUX_POOL x AUX_POOL here to keep the step cheap; the cosine
  similarity matrix of the batch's (centred) features should match that of its (centred) one-hot
  labels: 1 within a class, -1/(C-1) across. It keeps the batch's structure, not just the labels.
- reconstruction (after InfoPro, arXiv 2101.10832): a 1x1 conv decoder rebuilds the unit's input
  from its output (bilinear upsampling to the input's size), mean squared error. InfoPro rebuilds
  the image; a pipeline stage does not have it, so each unit rebuilds what it received, which
  keeps the image's information by induction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ffpipe.ff.goodness import pool_at_most

AUX_POOL = 8


class SimilarityMatching(nn.Module):
    def __init__(self, channels: int, num_classes: int, flat: bool):
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Linear(channels, channels, bias=False) if flat else \
            nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if z.dim() == 4:
            z = pool_at_most(z, AUX_POOL)
        h = self.conv(z).flatten(1).float()
        h = F.normalize(h - h.mean(dim=1, keepdim=True), dim=1)
        same = (y[:, None] == y[None, :]).float()
        # centred one-hot labels, normalised: 1 within a class, -1/(C-1) across (no host sync)
        across = -1.0 / (self.num_classes - 1)
        target = same * (1.0 - across) + across
        return F.mse_loss(h @ h.T, target)


class InputReconstruction(nn.Module):
    def __init__(self, channels: int, in_channels: int, flat: bool):
        """`in_channels`: the input's channels, or for flat features its size per sample."""
        super().__init__()
        self.decode = nn.Linear(channels, in_channels) if flat else nn.Conv2d(channels, in_channels, 1)

    def forward(self, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rebuilt = self.decode(z)
        if rebuilt.dim() == 4 and rebuilt.shape[-2:] != x.shape[-2:]:
            rebuilt = F.interpolate(rebuilt, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return F.mse_loss(rebuilt.float(), x.detach().reshape(rebuilt.shape).float())


def make_aux(kind: str, channels: int, in_channels: int, num_classes: int, flat: bool) -> nn.Module | None:
    if kind == "similarity":
        return SimilarityMatching(channels, num_classes, flat)
    if kind == "reconstruction":
        return InputReconstruction(channels, in_channels, flat)
    return None
