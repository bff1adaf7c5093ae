"""End-to-end backprop: the same units chained without detaches, global pooling, a linear classifier.

It is one learner over the whole network, so the runtime that trains SFF units trains it too
(as a single unit, on one stage) with the same data, schedule and metrics. With deep supervision
(algo.deep_supervision) every unit also has an SFF goodness head whose loss is added to the
classifier's, and one backward runs through all of it (deeply-supervised nets, Lee et al. 2015):
the stronger baseline that local-learning methods are judged against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ffpipe.config import AlgoConfig
from ffpipe.ff.goodness import sff_loss
from ffpipe.ff.unit import UnitOutput, count_correct


class BPNetwork(nn.Module):
    index = 0
    input_autocasts = True  # the first unit's conv (or linear) layer reads the images first

    def __init__(self, units: list[nn.Module], feature_channels: int, num_classes: int,
                 heads: list[nn.Module] | None = None, algo: AlgoConfig | None = None):
        """`heads`: one goodness head per unit for deep supervision (None: plain BP); `algo`:
        their goodness, margin and temperature."""
        super().__init__()
        self.body = nn.ModuleList(units)  # named as in the other learners: what transfer loads
        self.classifier = nn.Linear(feature_channels, num_classes)
        self.heads = nn.ModuleList(heads) if heads else None
        self.algo = algo

    def forward(self, x: torch.Tensor, skips: tuple, y: torch.Tensor | None = None,
                out_dtype: torch.dtype | None = None) -> UnitOutput:
        supervised = self.heads is not None and y is not None
        head_losses = []
        for i, unit in enumerate(self.body):
            x, skips = unit(x, skips)
            if supervised:
                g_BC = self.heads[i](x, self.algo.goodness)
                head_losses.append(sff_loss(g_BC, y, self.algo.margin, self.algo.temperature))
        features = x.mean(dim=(2, 3)) if x.dim() == 4 else x
        logits_BC = self.classifier(features).float()
        loss = correct = None
        if y is not None:
            loss = F.cross_entropy(logits_BC, y)
            if head_losses:
                loss = loss + torch.stack(head_losses).sum()
            correct = count_correct(logits_BC, y)
        return UnitOutput(x.detach(), skips, logits_BC, loss, correct)

    def vote(self, scores_BC: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores_BC, dim=1)
