"""What feeds stage 0: the run's plan turned into the stream of messages every stage will see.

For each epoch: its training batches (TRAIN), EPOCH_END, then (every `eval_every` epochs and
after the last) the validation batches (VAL, where data.val_fraction holds some out), the test
batches (EVAL) and EVAL_END; then END. The stream depends only on the config and the seed, so
every backend sees the same batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ffpipe.config import Config
from ffpipe.data import DeviceLoader
from ffpipe.data.loader import batches_per_epoch
from ffpipe.errors import DataError
from ffpipe.pipeline.messages import Message, Phase, control

# What stage 0 may do to a batch before the first unit: (x, y, training, step) -> x, `training`
# False for evaluation batches (classic Forward-Forward overlays labels: baselines/classic_ff.py).
InputTransform = Callable[[torch.Tensor, torch.Tensor, bool, int], torch.Tensor]


@dataclass(frozen=True)
class RunPlan:
    steps_per_epoch: int
    total_steps: int
    num_units: int
    num_classes: int

    @property
    def epochs(self) -> int:
        return -(-self.total_steps // self.steps_per_epoch)


def make_plan(cfg: Config, num_train: int, num_units: int, num_classes: int) -> RunPlan:
    steps_per_epoch = batches_per_epoch(num_train, cfg.train.batch_size, cfg.train.drop_last)
    if steps_per_epoch == 0:
        raise DataError(f"train.batch_size = {cfg.train.batch_size} is larger than the training set "
                        f"({num_train} images); lower train.batch_size (or set train.drop_last = false)")
    total = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)
    return RunPlan(steps_per_epoch, total, num_units, num_classes)


class DataSource:
    """The inbox of stage 0: recv() yields the next message of the stream."""

    def __init__(self, plan: RunPlan, train: DeviceLoader, test: DeviceLoader,
                 transform: InputTransform | None = None, start_step: int = 0, eval_only: bool = False,
                 stop_after_step: int = 0, eval_every: int = 1, val: DeviceLoader | None = None,
                 unit_votes: bool = False, microbatches: int = 1):
        """`val`: the validation split's loader; `unit_votes`: evaluation messages carry each
        unit's votes (B x U x C) rather than their sum; `microbatches`: each training batch
        crosses the pipeline as that many messages (train.microbatches)."""
        self.plan, self.train, self.test, self.transform = plan, train, test, transform
        self.microbatches = microbatches
        self.val, self.unit_votes = val, unit_votes
        self.eval_every = eval_every
        # A stop point already passed (a resumed run) means: go on to the end.
        self.stop_after_step = stop_after_step if stop_after_step > start_step else 0
        self._stream = self._eval_stream(0, start_step) if eval_only else self._stream_from(start_step)

    def recv(self) -> Message:
        return next(self._stream)

    def close(self) -> None:
        for loader in (self.train, self.test, self.val):
            if loader is not None:
                loader.close()  # a streamed split's reading ahead stops here

    def _stream_from(self, start_step: int) -> Iterator[Message]:
        spe, total = self.plan.steps_per_epoch, self.plan.total_steps
        for epoch in range(start_step // spe, self.plan.epochs):
            first = epoch * spe
            start = max(start_step - first, 0)
            n = min(spe, total - first)
            for b, (x, y) in zip(range(start, n), self.train.batches(epoch, start)):
                if self.stop_after_step and first + b == self.stop_after_step:  # stop early: every stage checkpoints on END
                    yield control(Phase.END, epoch, first + b)
                    return
                msg = self._message(Phase.TRAIN, epoch, first + b, x, y, self.train)
                yield from self._microbatches(msg)
            yield control(Phase.EPOCH_END, epoch, first + n)
            if (epoch + 1) % self.eval_every == 0 or epoch == self.plan.epochs - 1:
                yield from self._eval_stream(epoch, first + n, end=False)
        yield control(Phase.END, self.plan.epochs - 1, total)

    def _eval_stream(self, epoch: int, step: int = 0, end: bool = True) -> Iterator[Message]:
        splits = [(Phase.VAL, self.val)] if self.val is not None else []
        for phase, loader in [*splits, (Phase.EVAL, self.test)]:
            for i, (x, y) in enumerate(loader.batches(epoch)):
                msg = self._message(phase, epoch, i, x, y, loader)
                units = (self.plan.num_units,) if self.unit_votes else ()
                msg.votes = torch.zeros(len(y), *units, self.plan.num_classes, device=y.device)
                msg.unit_correct = torch.zeros(self.plan.num_units, dtype=torch.long, device=y.device)
                yield msg
        yield control(Phase.EVAL_END, epoch, step)
        if end:
            yield control(Phase.END, epoch, step)

    def _microbatches(self, msg: Message) -> Iterator[Message]:
        """The step's batch as train.microbatches row slices (as even as the rows allow: sizes
        differ by one at most, and a batch of fewer rows has one per row), after the transform."""
        count = min(self.microbatches, len(msg.y))
        if count == 1:
            yield msg
            return
        for i, (x, y) in enumerate(zip(msg.x.tensor_split(count), msg.y.tensor_split(count))):
            yield msg.replace(x=x, y=y, micro=i, micros=count, step_rows=len(msg.y))

    def _message(self, phase: Phase, epoch: int, step: int, x, y, loader) -> Message:
        if self.transform is not None:
            x = self.transform(x, y, phase is Phase.TRAIN, step)
        # A loader that decodes one replica's rows only (a stream) says where they lie in the batch.
        offset, total = getattr(loader, "shard", None) or (0, 0)
        return Message(phase, epoch, step, x=x, y=y, offset=offset, total=total)

    @property
    def sharded(self) -> bool:
        """Whether the loaders give one replica's rows of each batch (no ShardedSource needed)."""
        return getattr(self.train, "cuts", False)
