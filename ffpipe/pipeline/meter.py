"""What a stage measures about itself while it trains, kept on its device until read.

Each learner's summed loss and correct count, the first step at which each loss was non-finite
(the guard that names the unit), and on a GPU the device time of every training step (CUDA
events around it: how busy the device really is, which the host's waits cannot tell once the host
runs ahead of it). Updates happen inside the step without a host sync and in place (a CUDA graph
replays them on fixed addresses); `read()` syncs with the device once, on log steps.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ffpipe.errors import TrainingError
from ffpipe.pipeline.sync import wait_for_device


class StageMeter:
    def __init__(self, stage_id: int, unit_ids: list[int], device: torch.device, sync_timeout_s: float,
                 replica_group=None):
        """`replica_group`: the stage's replicas, whose sums make the whole batch's figures."""
        self.stage_id, self.unit_ids, self.device = stage_id, unit_ids, device
        self.sync_timeout_s = sync_timeout_s
        self.replica_group = replica_group
        n = len(unit_ids)
        self.step_t = torch.zeros((), dtype=torch.long, device=device)
        self._first_bad_step = torch.full((n,), -1, dtype=torch.long, device=device)
        self._loss_sum = torch.zeros(n, device=device)
        self._correct_sum = torch.zeros(n, dtype=torch.long, device=device)
        self.gpu_busy_s = 0.0 if device.type == "cuda" else None
        self._step_events: list[tuple] = []
        self._reset()

    def at_step(self, step: int) -> None:
        """The stage resumes after `step` steps."""
        self.step_t.fill_(step)

    def step_started(self) -> None:
        if self.gpu_busy_s is not None:
            self._step_events.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
            self._step_events[-1][0].record(torch.cuda.current_stream(self.device))

    def step_ended(self, batch: int, ends_step: bool = True) -> None:
        """After training on a batch of `batch` rows (the whole batch, for a replica); `ends_step`
        False: a microbatch before its step's last."""
        if self.gpu_busy_s is not None:
            self._step_events[-1][1].record(torch.cuda.current_stream(self.device))
        self._images += batch
        self._steps_since_read += ends_step

    def track(self, loss_U: torch.Tensor, correct_U: torch.Tensor, ends_step: bool = True) -> None:
        """Inside the step: each learner's loss (weighted by its rows' share of the step's batch)
        and correct count (no host sync, all in place); the step counts once, at its end."""
        self._loss_sum += loss_U
        self._correct_sum += correct_U
        bad = ~torch.isfinite(loss_U) & (self._first_bad_step < 0)
        self._first_bad_step.copy_(torch.where(bad, self.step_t, self._first_bad_step))
        if ends_step:
            self.step_t += 1

    @property
    def pending_steps(self) -> int:
        """Steps trained since the figures were last read."""
        return self._steps_since_read

    def sync(self, what: str) -> None:
        """Wait for the device's queued work, never longer than pipeline.timeout_s."""
        wait_for_device(self.device, self.sync_timeout_s, f"stage {self.stage_id}", what)

    def read(self) -> list[dict]:
        """Mean loss and training accuracy of each learner since the last read (a host sync);
        raises TrainingError naming the first unit whose loss became non-finite."""
        self.sync("its metrics")
        if self.replica_group is not None:  # the whole batch's: weighted losses and counts summed
            for total in (self._loss_sum, self._correct_sum):
                dist.all_reduce(total, group=self.replica_group)
        if self._step_events:  # the device is idle now: every event has happened
            self.gpu_busy_s += sum(a.elapsed_time(b) for a, b in self._step_events) / 1000
            self._step_events.clear()
        self._check_finite()
        steps, images = max(1, self._steps_since_read), max(1, self._images)
        rows = [{"unit": unit, "loss": loss / steps, "accuracy": correct / images}
                for unit, loss, correct in zip(self.unit_ids, self._loss_sum.tolist(), self._correct_sum.tolist())]
        self._reset()
        return rows

    def _check_finite(self) -> None:
        first_bad = self._first_bad_step.tolist()  # note: a CPU-GPU sync point, on log steps only
        for unit, step in zip(self.unit_ids, first_bad):
            if step >= 0:
                raise TrainingError(
                    f"the loss of unit {unit} (stage {self.stage_id}) became non-finite at step "
                    f"{step}; lower train.lr, raise algo.temperature, set algo.grad_clip or use "
                    "algo.goodness = 'log_mean_square'")

    def _reset(self) -> None:
        self._loss_sum.zero_()
        self._correct_sum.zero_()
        self._images = 0
        self._steps_since_read = 0
