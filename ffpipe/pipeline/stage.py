"""Stage: consecutive learners on one device, trained batch by batch from what arrives.

Each learner's input is detached, so its loss reaches only its own parameters: the stage runs a
forward, the local loss and a backward per learner, in turn, so that a learner's activations are
freed before the next one runs (the memory of one unit, not of the stage), and then one step of
one optimizer over all of them (exactly one step per unit, with a fraction of the kernel
launches). On a GPU the whole step is replayed as a CUDA graph (pipeline/graphed.py).
Statistics stay on the device and are read (a host sync) only when asked, on log steps
(pipeline/meter.py).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ffpipe.config import Config, TrainConfig
from ffpipe.errors import PipelineError
from ffpipe.ff.optim import build_optimizer, lr_at, set_lr
from ffpipe.kernels.batchnorm import lean_batchnorms
from ffpipe.models import UnitShape
from ffpipe.pipeline.graphed import GraphedStep, plan_graphs
from ffpipe.pipeline.messages import Message
from ffpipe.pipeline.meter import StageMeter
from ffpipe.pipeline.replicas.synced import GradientSum, share_of, sync_batchnorm
from ffpipe.pipeline.stage_state import load_unit_states, trainable, unit_states


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """train.precision on this device: 'auto' is bf16 autocast on GPUs, fp32 elsewhere."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def input_dtype(precision: str, first_learner: nn.Module, device: torch.device) -> torch.dtype | None:
    """What stage 0 casts the images to (None: they stay as they are): the autocast dtype where
    the first learner's first layer (a conv or linear layer) would cast them to it anyway, so
    the values are the same and a batch takes half the memory. The loader makes them so too."""
    amp = autocast_dtype(precision, device)
    return amp if amp is not None and getattr(first_learner, "input_autocasts", False) else None


@dataclass(frozen=True)
class StageOptions:
    """What a stage needs of the config: the training section (optimizer, schedule, precision,
    memory format, CUDA graphs, frozen bodies), the gradient clip, and whether it trains."""
    train: TrainConfig
    grad_clip: float = 0.0
    sync_timeout_s: float = 300.0  # pipeline.timeout_s: the longest a host sync may wait
    dropout: bool = False          # model.dropout: its masks are drawn on the host every step
    training: bool = True          # False: evaluation only (ffpipe eval), no training step

    @classmethod
    def of(cls, cfg: Config, training: bool = True) -> "StageOptions":
        return cls(cfg.train, cfg.algo.grad_clip, cfg.pipeline.timeout_s, cfg.model.dropout > 0, training)


def place_learners(learners: list[nn.Module], device: torch.device, channels_last: bool, frozen: bool,
                   replica_group=None) -> nn.ModuleList:
    """The stage's learners on its device: batch norms synced over the replicas (replicas/synced.py)
    or, on a GPU, lean (kernels/batchnorm.py: past 2^31 elements, and lean on memory); maps
    channels_last; with `frozen` (a linear probe) the bodies keep their weights."""
    placed = nn.ModuleList(learners).to(device)
    if replica_group is not None:
        sync_batchnorm(placed, replica_group)
    elif device.type == "cuda":
        lean_batchnorms(placed)
    if channels_last:
        placed.to(memory_format=torch.channels_last)
    for learner in placed if frozen else ():
        learner.body.requires_grad_(False)
    return placed


class Stage:
    def __init__(self, stage_id: int, learners: list[nn.Module], options: StageOptions, total_steps: int,
                 device: torch.device, expect: UnitShape | None = None, replica_group=None):
        """`expect`: per-sample shapes arriving from the previous stage (None: not checked);
        `replica_group`: the process group of this stage's replicas (None: it has one)."""
        self.stage_id, self.expect, self.device = stage_id, expect, device
        self.unit_ids = [learner.index for learner in learners]
        train = self.train_cfg = options.train
        self.grad_clip, self.total_steps, self.frozen = options.grad_clip, total_steps, train.freeze_bodies
        self.channels_last = device.type == "cuda" and train.channels_last
        self.learners = place_learners(learners, device, self.channels_last, self.frozen, replica_group)
        # Replicas: whole-batch batch norm (above) and each unit's gradients summed over them.
        self.gradient_sum = GradientSum(replica_group) if replica_group is not None else None
        graphs = plan_graphs(train.cuda_graphs, device, dropout=options.dropout, replicated=replica_group is not None,
                             training=options.training, microbatches=train.microbatches)
        # One parameter group for the whole stage: one fused optimizer launch instead of one per
        # unit (every update is per parameter, so this changes no value).
        self._slots, params = trainable(self.learners)
        self.optimizer = build_optimizer([{"params": params}], train, device, capturable=graphs.capture)
        self.amp_dtype = autocast_dtype(train.precision, device)
        self.input_dtype = input_dtype(train.precision, learners[0], device)
        self.step, self.lr = 0, 0.0
        self.meter = StageMeter(stage_id, self.unit_ids, device, options.sync_timeout_s, replica_group)
        self.graphed = (GraphedStep(self._learn, self._reset_grads, device, self._prepare, graphs.max_step_s,
                                    graphs.microbatches) if graphs.capture else None)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        # No cast cache: each learner's forward casts its weights once anyway, and a graph
        # capture must not keep casts from outside it.
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=False)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.input_dtype if self.input_dtype is not None and x.is_floating_point() else x.dtype
        if self.channels_last and x.dim() == 4:
            return x.to(dtype=dtype, memory_format=torch.channels_last)
        return x.to(dtype)

    def _check(self, msg: Message) -> None:
        """Shapes only (no host sync): a mismatch means the stages disagree on the model."""
        got = (tuple(msg.x.shape[1:]), tuple(tuple(s.shape[1:]) for s in msg.skips))
        want = (self.expect.out, self.expect.skips)
        if got != want:
            raise PipelineError(
                f"stage {self.stage_id} expects activations {list(want[0])} and skips "
                f"{[list(s) for s in want[1]]} from stage {self.stage_id - 1} but received "
                f"{list(got[0])} and {[list(s) for s in got[1]]}: the stages disagree on the model "
                "or the split; start every stage with the same config")

    def train_step(self, msg: Message) -> Message:
        """One message's training: a whole step, or one microbatch of it (train.microbatches),
        whose gradients add up until the step's last one takes the optimizer step."""
        if self.expect is not None:
            self._check(msg)
        msg = msg.to(self.device)  # a no-op when the previous stage shares the device
        self.learners.train()
        if self.frozen:
            for learner in self.learners:
                learner.body.eval()
        if msg.micro == 0:
            self.lr = lr_at(self.step, self.total_steps, self.train_cfg)
            set_lr(self.optimizer, self.lr)
        self.meter.step_started()
        # Each loss weighted by its rows' share of the step's batch, so that the summed gradients
        # are those of the batch's mean loss (a replica's shard, or an uneven last microbatch).
        share = share_of(len(msg.y), msg.step_rows or msg.batch_size)
        if self.graphed is not None:  # it prepares x itself (into the graph's input)
            x, skips = self.graphed(msg.x, msg.skips, msg.y, share, msg.micro, msg.ends_step)
        else:
            x, skips = self._learn(self._prepare(msg.x), msg.skips, msg.y, share, msg.ends_step)
            if msg.ends_step:
                self._reset_grads(True)
        self.meter.step_ended(msg.batch_size, msg.ends_step)
        self.step += msg.ends_step
        return msg.replace(x=x, skips=skips)

    def _learn(self, x: torch.Tensor, skips: tuple, y: torch.Tensor,
               share: float = 1.0, ends_step: bool = True) -> tuple[torch.Tensor, tuple]:
        """One training step of every learner on a batch (no host sync: a graph can replay it).
        `share`: these rows over the step's batch (1 for a whole, unreplicated batch);
        `ends_step` False: a microbatch before the last, its gradients kept for the next."""
        losses, correct = [], []
        for learner in self.learners:
            with self._autocast():
                out = learner(x, skips, y, self.amp_dtype)
            # A backward per learner, right after its forward: its input is detached, so this
            # reaches only its own parameters, and its activations are freed before the next
            # learner runs. (Bit-identical to one backward over the sum of the losses.)
            loss = out.loss if share == 1.0 else out.loss * share
            loss.backward()
            if self.gradient_sum is not None:  # summed over the replicas while the next learner runs
                self.gradient_sum.start(list(learner.parameters()))
            x, skips = out.x, out.skips
            losses.append(loss.detach().float())
            correct.append(out.correct)
        if ends_step:
            self._update()
        self.meter.track(torch.stack(losses), torch.stack(correct), ends_step)
        return x, skips

    def _update(self) -> None:
        """The optimizer step on the gradients (summed over the replicas, clipped)."""
        if self.gradient_sum is not None:
            self.gradient_sum.finish()
        if self.grad_clip > 0:
            for learner in self.learners:
                torch.nn.utils.clip_grad_norm_(learner.parameters(), self.grad_clip, foreach=True)
        self.optimizer.step()

    def release_graph(self) -> None:
        """After training: free the captured step (and any communicator it holds)."""
        if self.graphed is not None:
            self.graphed.release()

    def _reset_grads(self, set_to_none: bool) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def eval_step(self, msg: Message) -> Message:
        if self.expect is not None:
            self._check(msg)
        msg = msg.to(self.device)
        self.learners.eval()
        x, skips = self._prepare(msg.x), msg.skips
        votes, unit_correct = msg.votes.clone(), msg.unit_correct.clone()
        with self._autocast():
            for learner in self.learners:
                out = learner(x, skips, None, self.amp_dtype)
                x, skips = out.x, out.skips
                if votes.dim() == 3:  # each unit's votes kept apart (algo.vote chooses among them)
                    votes[:, learner.index] = learner.vote(out.scores_BC)
                else:
                    votes += learner.vote(out.scores_BC)
                unit_correct[learner.index] += (out.scores_BC.argmax(dim=1) == msg.y).sum()
        return msg.replace(x=x, skips=skips, votes=votes, unit_correct=unit_correct)

    @property
    def pending_steps(self) -> int:
        """Steps trained since the statistics were last read."""
        return self.meter.pending_steps

    @property
    def gpu_busy_s(self) -> float | None:
        """Device seconds of its training steps so far (None on CPU)."""
        return self.meter.gpu_busy_s

    def sync(self, what: str = "a checkpoint") -> None:
        """Wait for the device's queued work, never longer than pipeline.timeout_s."""
        self.meter.sync(what)

    def read_stats(self) -> list[dict]:
        """Mean loss and training accuracy of each learner since the last read (a host sync)."""
        return self.meter.read()

    def state_dict(self) -> dict:
        """Its position and, by unit, each unit's learner and optimizer state (stage_state.py)."""
        return {"step": self.step, "units": unit_states(self.learners, self.optimizer, self._slots)}

    def load_state_dict(self, state: dict) -> None:
        load_unit_states(self.learners, self.optimizer, self._slots, state["units"], state["step"])
        self.step = state["step"]
        self.meter.at_step(self.step)
