"""End-to-end backprop: the same units chained without detaches, global pooling, a linear classifier.

It is one learner over the whole network, so the runtime that trains SFF units trains it too
(as a single unit, on one stage) with the same data, schedule and metrics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ffpipe.ff.unit import UnitOutput, count_correct


class BPNetwork(nn.Module):
    index = 0

    def __init__(self, units: list[nn.Module], feature_channels: int, num_classes: int):
        super().__init__()
        self.body = nn.ModuleList(units)  # named as in the other learners: what transfer loads
        self.classifier = nn.Linear(feature_channels, num_classes)

    def forward(self, x: torch.Tensor, skips: tuple, y: torch.Tensor | None = None,
                out_dtype: torch.dtype | None = None) -> UnitOutput:
        for unit in self.body:
            x, skips = unit(x, skips)
        features = x.mean(dim=(2, 3)) if x.dim() == 4 else x
        logits_BC = self.classifier(features).float()
        loss = correct = None
        if y is not None:
            loss = F.cross_entropy(logits_BC, y)
            correct = count_correct(logits_BC, y)
        return UnitOutput(x.detach(), skips, logits_BC, loss, correct)

    def vote(self, scores_BC: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores_BC, dim=1)
