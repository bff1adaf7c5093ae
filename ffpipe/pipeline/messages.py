"""The only things that cross a stage boundary, and the channels they cross it by.

A Message is one batch (or a control marker) on its way down the pipeline: the activations, the
detached skip tensors that residual blocks still need, the labels, where it belongs (phase, epoch,
step), and while evaluating the running sum of goodness votes and per-unit correct counts so the
last stage can report every accuracy without a second pass. A stage receives from its Inbox and
sends to its Outbox; between two stages both are one Channel, which every transport implements
(ffpipe/transport); stage 0's inbox is the data source, the last stage's outbox the evaluation sink.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Protocol

import torch


class Phase(enum.IntEnum):
    TRAIN = 0      # a training batch: every stage trains its units on it
    EPOCH_END = 1  # all training batches of `epoch` have been sent: stages checkpoint
    EVAL = 2       # a test batch: every stage adds its units' votes
    EVAL_END = 3   # all test batches of `epoch` have been sent: the last stage reports
    END = 4        # end of stream: every stage finishes and passes it on
    VAL = 5        # a validation batch (data.val_fraction): evaluated as EVAL, counted apart


@dataclass
class Message:
    phase: Phase
    epoch: int
    step: int                         # TRAIN: global optimizer step; EVAL: index of the test batch
    x: torch.Tensor | None = None
    skips: tuple = ()
    y: torch.Tensor | None = None
    # EVAL/VAL: sum over units so far of vote probabilities, B x C; or each unit's, B x U x C
    # (the votes that choose among units on the validation split: algo.vote)
    votes: torch.Tensor | None = None
    unit_correct: torch.Tensor | None = None   # EVAL: correct predictions of each unit so far, U
    # A shard of a batch (stage replicas): its first row in the whole batch and the batch's size;
    # total 0: the message is the whole batch.
    offset: int = 0
    total: int = 0
    # A microbatch of a training step (train.microbatches): its index, how many the step has and
    # the rows of the step's whole batch (0: one microbatch); stages step after the last one.
    micro: int = 0
    micros: int = 1
    step_rows: int = 0

    @property
    def is_control(self) -> bool:
        return self.x is None

    def replace(self, **changes) -> "Message":
        return dataclasses.replace(self, **changes)

    @property
    def ends_step(self) -> bool:
        """The last microbatch of its optimizer step (every message of a step of one)."""
        return self.micro == self.micros - 1

    @property
    def batch_size(self) -> int:
        """Rows of the whole batch this message is (a shard of)."""
        return self.total or (0 if self.y is None else len(self.y))

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the message carries, in a fixed order (what a transport must move)."""
        out = [t for t in (self.x, *self.skips, self.y, self.votes, self.unit_correct) if t is not None]
        return out

    def to(self, device: torch.device) -> "Message":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return self.replace(x=move(self.x), skips=tuple(move(s) for s in self.skips), y=move(self.y),
                            votes=move(self.votes), unit_correct=move(self.unit_correct))


def control(phase: Phase, epoch: int, step: int) -> Message:
    return Message(phase=phase, epoch=epoch, step=step)


class Inbox(Protocol):
    def recv(self) -> Message:
        """The next message, in the order sent; raises PipelineError when the sender is gone or
        silent for longer than the pipeline timeout."""

    def close(self) -> None: ...


class Outbox(Protocol):
    def send(self, msg: Message) -> None:
        """Blocks once `queue_depth` messages are in flight, so a fast stage waits instead of
        filling memory."""

    def close(self) -> None:
        """Only once the other end has everything sent (a process may exit after it)."""


class Channel(Inbox, Outbox, Protocol):
    """One direction between two neighbouring stages: one stage's outbox, the next one's inbox."""
