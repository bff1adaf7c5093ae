"""The run's vote (algo.vote) as a trained network applies it, with the arithmetic of the
evaluation sink (pipeline/sink.py), so that a prediction agrees with `ffpipe eval` to the last image:

- mean: the sum of every unit's softmax of goodness, added unit by unit (or summed over the
  stacked votes where the run kept each unit's votes apart, as evaluation did);
- last: the last unit's own goodness (its argmax is the unit's answer);
- best_range: the mean of units i..j chosen on the validation split, as a difference of
  cumulative sums (the sink's range_correct);
- weighted: every unit's softmax times its SAMME weight, from the validation accuracies.

Early exit (`upto`): the vote of units 0..k only, for a prediction that stops at unit k.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ffpipe.pipeline.sink import samme_weights


@dataclass(frozen=True)
class VoteRule:
    name: str                               # mean | last | best_range | weighted
    num_units: int
    apart: bool = False                     # evaluation kept each unit's votes apart (B x U x C)
    units: tuple[int, int] | None = None    # best_range: the first and last unit voting
    weights: tuple[float, ...] | None = None  # weighted: one per unit

    @classmethod
    def of_run(cls, vote: str, num_units: int, num_classes: int, apart: bool, result: dict | None) -> "VoteRule":
        """The rule `ffpipe eval` applied, from its result (eval.json or the history's entry):
        a range or weights chosen on a validation split; without one (no split) the mean."""
        result = result or {}
        if vote == "best_range" and apart and "vote_units" in result:
            return cls(vote, num_units, apart, units=tuple(result["vote_units"]))
        if vote == "weighted" and apart and "val_accuracy_per_unit" in result:
            weights = samme_weights(result["val_accuracy_per_unit"], num_classes)
            return cls(vote, num_units, apart, weights=tuple(weights))
        return cls("last" if vote == "last" else "mean", num_units, apart)

    @property
    def last_unit(self) -> int:
        """The deepest unit the vote reads: a prediction needs no unit after it. (The weighted
        vote sums over every unit, zero weights too, as evaluation does: the same rounding.)"""
        return self.units[1] if self.units is not None else self.num_units - 1

    def describe(self) -> dict:
        out = {"vote": self.name}
        if self.units is not None:
            out["vote_units"] = list(self.units)
        if self.weights is not None:
            out["vote_weights"] = list(self.weights)
        return out

    def decide(self, scores_BUC: torch.Tensor, votes_BUC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the argmax is taken of, the vote's class probabilities), B x C each."""
        if self.name == "last":
            return scores_BUC[:, -1], votes_BUC[:, -1]
        if self.units is not None:
            i, j = self.units
            prefix = torch.cat([votes_BUC.new_zeros(votes_BUC.shape[0], 1, votes_BUC.shape[2]),
                                votes_BUC.cumsum(dim=1)], dim=1)
            summed = prefix[:, j + 1] - prefix[:, i]
            return summed, summed / (j - i + 1)
        if self.weights is not None:
            w = votes_BUC.new_tensor(self.weights)
            summed = (votes_BUC * w[None, :, None]).sum(dim=1)
            return summed, summed / w.sum()
        if self.apart:
            summed = votes_BUC.sum(dim=1)
        else:  # as the stage added them: unit by unit onto zeros
            summed = torch.zeros_like(votes_BUC[:, 0])
            for u in range(votes_BUC.shape[1]):
                summed += votes_BUC[:, u]
        return summed, summed / votes_BUC.shape[1]

    def upto(self, votes_BUC: torch.Tensor) -> torch.Tensor:
        """The class probabilities of the vote restricted to the units given (0..k): the mean of
        them, the last of them, the chosen range's part of them, or their weighted mean; where
        the restriction leaves no unit with a say (k before the range, zero weights), unit k's."""
        k = votes_BUC.shape[1] - 1
        if self.name == "last":
            return votes_BUC[:, k]
        if self.units is not None:
            i = self.units[0]
            return votes_BUC[:, k] if k < i else votes_BUC[:, i:].mean(dim=1)
        if self.weights is not None:
            w = votes_BUC.new_tensor(self.weights[:k + 1])
            if float(w.sum()) == 0:
                return votes_BUC[:, k]
            return (votes_BUC * w[None, :, None]).sum(dim=1) / w.sum()
        return votes_BUC.mean(dim=1)
