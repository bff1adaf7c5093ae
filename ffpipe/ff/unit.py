"""LocalUnit: a unit's module plus its goodness head, and the local loss that trains them.

Every learner the runtime drives (SFF's LocalUnit here, and the BP and classic-FF baselines) has
the same call: `forward(x, skips, y=None, out_dtype=None) -> UnitOutput` and `vote(scores)`.
Nothing a learner returns for the next unit carries a grad_fn: the boundary between units is a
detach, and it is written in each learner's forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ffpipe.config import AlgoConfig
from ffpipe.ff.goodness import GoodnessHead, normalize_output, sff_loss, vote_probs


@dataclass
class UnitOutput:
    x: torch.Tensor               # detached output for the next unit
    skips: tuple                  # detached skip stack for the units that close residual blocks
    scores_BC: torch.Tensor       # per-class scores (goodness, or logits for BP)
    loss: torch.Tensor | None     # the local loss (with labels only); attached to this unit only
    correct: torch.Tensor | None  # with labels: how many of the batch this unit got right


def count_correct(scores_BC: torch.Tensor, y_B: torch.Tensor) -> torch.Tensor:
    return (scores_BC.argmax(dim=1) == y_B).sum()


class LocalUnit(nn.Module):
    """SFF: one unit of the network (`body`) with its auxiliary goodness head."""

    def __init__(self, index: int, body: nn.Module, out_channels: int, num_classes: int,
                 algo: AlgoConfig, head_kernel: int = 1, flat: bool = False):
        super().__init__()
        self.index = index
        self.body = body
        self.head = GoodnessHead(out_channels, num_classes, head_kernel, flat)
        self.goodness_kind = algo.goodness
        self.margin = algo.margin
        self.temperature = algo.temperature

    def forward(self, x: torch.Tensor, skips: tuple, y: torch.Tensor | None = None,
                out_dtype: torch.dtype | None = None) -> UnitOutput:
        z, skips = self.body(x, skips)
        g_BC = self.head(z, self.goodness_kind)
        loss = correct = None
        if y is not None:
            loss = sff_loss(g_BC, y, self.margin, self.temperature)
            correct = count_correct(g_BC, y)
        # The unit boundary: the next unit sees a normalised copy of z with no graph behind it,
        # so the caller's backward on `loss` reaches only this unit's body and head.
        x_next = normalize_output(z).detach()
        if out_dtype is not None:
            x_next = x_next.to(out_dtype)
        return UnitOutput(x_next, tuple(s.detach() for s in skips), g_BC, loss, correct)

    def vote(self, scores_BC: torch.Tensor) -> torch.Tensor:
        return vote_probs(scores_BC, self.temperature)
