"""The outbox of the last stage: turns evaluated batches into accuracies, epoch by epoch."""
from __future__ import annotations

from typing import Callable

from ffpipe.pipeline.messages import Message, Phase
from ffpipe.pipeline.sync import wait_for_device


class EvalSink:
    def __init__(self, num_units: int, on_result: Callable[[dict], None] | None = None,
                 sync_timeout_s: float = 300.0):
        self.num_units = num_units
        self.on_result = on_result
        self.sync_timeout_s = sync_timeout_s
        self.history: list[dict] = []
        self.finished = False
        self._reset()

    def _reset(self) -> None:
        self._vote_correct = None
        self._unit_correct = None
        self._count = 0

    def send(self, msg: Message) -> None:
        if msg.phase is Phase.EVAL:
            vote_correct = (msg.votes.argmax(dim=1) == msg.y).sum()
            if self._vote_correct is None:
                self._vote_correct, self._unit_correct = vote_correct, msg.unit_correct.clone()
            else:
                self._vote_correct += vote_correct
                self._unit_correct += msg.unit_correct
            self._count += len(msg.y)
        elif msg.phase is Phase.EVAL_END:
            self._report(msg)
        elif msg.phase is Phase.END:
            self.finished = True

    def _report(self, msg: Message) -> None:
        count = max(1, self._count)
        wait_for_device(self._unit_correct.device, self.sync_timeout_s, "the last stage", "its test accuracy")
        per_unit = [c / count for c in self._unit_correct.tolist()]  # a host sync, once per epoch
        result = {"epoch": msg.epoch, "step": msg.step, "test_accuracy": float(self._vote_correct) / count,
                  "test_accuracy_last": per_unit[-1], "test_accuracy_per_unit": per_unit,
                  "test_images": self._count}
        self.history.append(result)
        self._reset()
        if self.on_result is not None:
            self.on_result(result)

    def close(self) -> None:
        pass

