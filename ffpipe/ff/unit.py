"""LocalUnit: a unit's module plus its goodness head, and the local loss that trains them.

Every learner the runtime drives (SFF's LocalUnit here, and the BP and classic-FF baselines) has
the same call: `forward(x, skips, y=None, out_dtype=None) -> UnitOutput` and `vote(scores)`.
Nothing a learner returns for the next unit carries a grad_fn: the boundary between units is a
detach, and it is written in each learner's forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn

from ffpipe.config import AlgoConfig
from ffpipe.ff.goodness import GoodnessHead, boundary_norm, goodness, pending_norm, sff_loss, vote_probs
from ffpipe.kernels import goodness_loss


@dataclass
class UnitOutput:
    raw: torch.Tensor | None      # detached output (None where `boundary` holds it); the next unit receives `x`
    skips: tuple                  # detached skip stack for the units that close residual blocks
    scores_BC: torch.Tensor       # per-class scores (goodness, or logits for BP)
    loss: torch.Tensor | None     # the local loss (with labels only); attached to this unit only
    correct: torch.Tensor | None  # with labels: how many of the batch this unit got right
    boundary: Callable[[], torch.Tensor] | None = None

    @property
    def x(self) -> torch.Tensor:
        """What the next unit receives. The boundary transform runs when this is first read, so a
        stage that reads it after the unit's backward never holds the transformed copy and the
        backward's tensors at the same time."""
        if self.boundary is not None:
            self.raw, self.boundary = self.boundary(), None
        return self.raw


def count_correct(scores_BC: torch.Tensor, y_B: torch.Tensor) -> torch.Tensor:
    return (scores_BC.argmax(dim=1) == y_B).sum()


class LocalUnit(nn.Module):
    """SFF: one unit of the network (`body`) with its auxiliary goodness head."""

    def __init__(self, index: int, body: nn.Module, head: GoodnessHead, algo: AlgoConfig,
                 aux: nn.Module | None = None):
        """`head`: the unit's goodness head; `aux`: its algo.aux term (ff/aux.py), if any."""
        super().__init__()
        self.index = index
        self.body = body
        self.head = head
        self.aux = aux
        # The body's first operation (a conv or linear layer) casts its input under autocast, so
        # a stage may cast the images once beforehand; an aux term reads the input itself.
        self.input_autocasts = aux is None
        self.aux_weight = algo.aux_weight
        self.goodness_kind = algo.goodness
        self.margin = algo.margin
        self.temperature = algo.temperature

    def forward(self, x: torch.Tensor, skips: tuple, y: torch.Tensor | None = None,
                out_dtype: torch.dtype | None = None) -> UnitOutput:
        z, skips = self.body(x, skips)
        head_input, row_stats = self.head.pool_input(z)
        g_BC, loss, correct = self._scores(self.head.activations(head_input), y)
        if y is not None and self.aux is not None:
            loss = loss + self.aux_weight * self.aux(z, x, y)
        # The unit boundary: the next unit sees a normalised copy of z with no graph behind it,
        # so the caller's backward on `loss` reaches only this unit's body and head.
        # z may be overwritten by its norm in the head's backward only if nothing else reads it:
        # no aux term, and no skip tensor (passed on to a later unit) sharing its memory
        alone = row_stats is not None and self.aux is None and all(s.data_ptr() != z.data_ptr() for s in skips)
        pending = pending_norm(z, head_input, row_stats, sole_reader=alone)
        boundary = partial(_pass_on, pending, out_dtype)
        return UnitOutput(None, tuple(s.detach() for s in skips), g_BC, loss, correct, boundary)

    def _scores(self, a: torch.Tensor, y: torch.Tensor | None):
        """(goodness, the local loss, the hit count) from the head's activations: on a GPU in two
        kernels (kernels/goodness_loss.py), elsewhere in torch's operations."""
        if y is not None and not self.head.flat and goodness_loss.fuses(a, self.goodness_kind):
            return goodness_loss.goodness_loss(a, y, self.head.num_classes, self.margin, self.temperature)
        g_BC = goodness(a, self.goodness_kind, self.head.num_classes)
        if y is None:
            return g_BC, None, None
        return g_BC, sff_loss(g_BC, y, self.margin, self.temperature), count_correct(g_BC, y)

    def vote(self, scores_BC: torch.Tensor) -> torch.Tensor:
        return vote_probs(scores_BC, self.temperature)


def _pass_on(pending, out_dtype: torch.dtype | None) -> torch.Tensor:
    # z's boundary norm, written in the head's backward where its kernels pooled z, else made now
    # (no_grad inside; the detach says where the boundary is)
    x_next = boundary_norm(pending).detach()
    return x_next if out_dtype is None else x_next.to(out_dtype)
