"""The outbox of the last stage: turns evaluated batches into accuracies, epoch by epoch.

Every evaluation reports each unit's test accuracy, the last unit's, the mean vote's (the paper's:
mean of every unit's softmax) and the configured vote's (algo.vote) as `test_accuracy`:
- mean, last: from the running sum of votes and the per-unit counts;
- best_range: the contiguous units [i, j] whose mean vote is most accurate on the validation
  split (VAL batches) of this evaluation, scored on the test split (DeeperForward re-picks its
  range each epoch the same way);
- weighted: each unit's softmax weighted by its validation accuracy's log-odds, SAMME's boosting
  weight log(acc / (1 - acc)) + log(C - 1), clipped at 0 (a unit no better than chance drops out).
The validation batches come before the test batches of every evaluation, so the weights are
known before the first test batch.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ffpipe.pipeline.messages import Message, Phase
from ffpipe.pipeline.sync import wait_for_device


class _Tally:
    """Correct counts of one split in one evaluation, kept on the device until reported."""

    def __init__(self):
        self.count = 0
        self.mean = self.units = self.ranges = self.weighted = None

    def add(self, msg: Message, weights: torch.Tensor | None) -> None:
        votes, y = msg.votes, msg.y
        per_unit = votes.dim() == 3  # B x U x C
        mean = (votes.sum(dim=1) if per_unit else votes).argmax(dim=1) == y
        found = {"mean": mean.sum(), "units": msg.unit_correct}
        if per_unit:
            found["ranges"] = range_correct(votes, y)
            if weights is not None:
                found["weighted"] = ((votes * weights[None, :, None]).sum(dim=1).argmax(dim=1) == y).sum()
        for key, value in found.items():
            setattr(self, key, value.clone() if getattr(self, key) is None else getattr(self, key) + value)
        self.count += len(y)


def range_correct(votes_BUC: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """U x U: [i, j] counts the rows the mean vote of units i..j gets right (zero below i)."""
    b, u, c = votes_BUC.shape
    prefix = torch.cat([votes_BUC.new_zeros(b, 1, c), votes_BUC.cumsum(dim=1)], dim=1)
    out = torch.zeros(u, u, dtype=torch.long, device=votes_BUC.device)
    for i in range(u):  # U small matrices, not one of U^2 x B x C
        sums = prefix[:, i + 1:] - prefix[:, i:i + 1]
        out[i, i:] = (sums.argmax(dim=2) == y[:, None]).sum(dim=0)
    return out


def samme_weights(unit_accuracy: list[float], num_classes: int) -> list[float]:
    """log(acc / (1 - acc)) + log(C - 1) per unit, clipped at 0; all zero becomes all one."""
    eps = 1e-6
    w = [max(0.0, math.log(max(a, eps) / max(1 - a, eps)) + math.log(max(num_classes - 1, 1)))
         for a in unit_accuracy]
    return w if any(w) else [1.0] * len(w)


class EvalSink:
    def __init__(self, num_units: int, on_result: Callable[[dict], None] | None = None,
                 sync_timeout_s: float = 300.0, vote: str = "mean"):
        self.num_units = num_units
        self.on_result = on_result
        self.sync_timeout_s = sync_timeout_s
        self.vote = vote
        self.history: list[dict] = []
        self.finished = False
        self._reset()

    def _reset(self) -> None:
        self._tally = {Phase.VAL: _Tally(), Phase.EVAL: _Tally()}
        self._weights = None

    def send(self, msg: Message) -> None:
        if msg.phase in (Phase.VAL, Phase.EVAL):
            if msg.phase is Phase.EVAL and self._weights is None and self._tally[Phase.VAL].count:
                self._weights = self._unit_weights(msg)
            self._tally[msg.phase].add(msg, self._weights)
        elif msg.phase is Phase.EVAL_END:
            self._report(msg)
        elif msg.phase is Phase.END:
            self.finished = True

    def _unit_weights(self, msg: Message) -> torch.Tensor | None:
        """The weighted vote's weights, from this evaluation's validation counts (one host sync)."""
        val = self._tally[Phase.VAL]
        if self.vote != "weighted" or msg.votes.dim() != 3:
            return None
        accuracy = [c / val.count for c in val.units.tolist()]
        return torch.tensor(samme_weights(accuracy, msg.votes.shape[2]), device=msg.votes.device)

    def _report(self, msg: Message) -> None:
        test, val = self._tally[Phase.EVAL], self._tally[Phase.VAL]
        wait_for_device(test.units.device, self.sync_timeout_s, "the last stage", "its test accuracy")
        count = max(1, test.count)
        per_unit = [c / count for c in test.units.tolist()]  # host syncs, once per evaluation
        result = {"epoch": msg.epoch, "step": msg.step, "test_accuracy": float(test.mean) / count,
                  "test_accuracy_last": per_unit[-1], "test_accuracy_per_unit": per_unit,
                  "test_images": test.count, "vote": self.vote}
        result["test_accuracy_mean"] = result["test_accuracy"]
        if val.count:
            result["val_accuracy_per_unit"] = [c / val.count for c in val.units.tolist()]
            result["val_accuracy_mean"] = float(val.mean) / val.count
        result.update(self._chosen_vote(test, val, per_unit))
        self.history.append(result)
        self._reset()
        if self.on_result is not None:
            self.on_result(result)

    def _chosen_vote(self, test: _Tally, val: _Tally, per_unit: list[float]) -> dict:
        """test_accuracy (and how it was chosen) under algo.vote, beside the mean vote's."""
        if self.vote == "last":
            return {"test_accuracy": per_unit[-1]}
        if self.vote == "best_range" and test.ranges is not None and val.count:
            ranges = torch.ones_like(val.ranges, dtype=torch.bool).triu()  # [i, j] with i <= j
            i, j = divmod(int(torch.where(ranges, val.ranges, -1).argmax()), self.num_units)
            return {"test_accuracy": int(test.ranges[i, j]) / max(1, test.count), "vote_units": [i, j],
                    "val_accuracy": int(val.ranges[i, j]) / val.count}
        if self.vote == "weighted" and test.weighted is not None:
            return {"test_accuracy": float(test.weighted) / max(1, test.count),
                    "vote_weights": [round(w, 4) for w in self._weights.tolist()]}
        return {}

    def close(self) -> None:
        pass
