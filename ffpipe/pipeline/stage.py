"""Stage: consecutive learners on one device, trained batch by batch from what arrives.

Each learner's input is detached, so its loss reaches only its own parameters: the stage runs a
forward, the local loss and a backward per learner, in turn, so that a learner's activations are
freed before the next one runs (the memory of one unit, not of the stage), and then one step of
one optimizer over all of them (exactly one step per unit, with a fraction of the kernel
launches). On a GPU the whole step is replayed as a CUDA graph (pipeline/graphed.py).
Statistics stay on the device and are read (a host sync) only when asked, on log steps.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ffpipe.config import Config, TrainConfig
from ffpipe.errors import ConfigError, PipelineError, TrainingError
from ffpipe.models import UnitShape
from ffpipe.kernels.batchnorm import lean_batchnorms
from ffpipe.ff.optim import build_optimizer, load_optimizer_state, lr_at, set_lr
from ffpipe.pipeline.graphed import GRAPH_MAX_STEP_S, GraphedStep
from ffpipe.pipeline.messages import Message
from ffpipe.pipeline.replicas.synced import GradientSum, share_of, sync_batchnorm
from ffpipe.pipeline.sync import wait_for_device


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
    memory format, CUDA graphs, frozen bodies) and the gradient clip."""
    train: TrainConfig
    grad_clip: float = 0.0
    sync_timeout_s: float = 300.0  # pipeline.timeout_s: the longest a host sync may wait

    @classmethod
    def of(cls, cfg: Config) -> "StageOptions":
        # dropout draws its masks on the host every step: a graph would replay one of them
        train = dataclasses.replace(cfg.train, cuda_graphs="off") if cfg.model.dropout else cfg.train
        return cls(train, cfg.algo.grad_clip, cfg.pipeline.timeout_s)


def use_cuda_graphs(setting: str, device: torch.device) -> bool:
    """train.cuda_graphs: 'auto' graphs every CUDA stage (training shapes are static: every
    training batch is full), replicated ones included (NCCL's collectives are captured with the
    step), except a step too long to gain from it (graphed.GRAPH_MAX_STEP_S); 'on' insists on it,
    'off' keeps the eager step."""
    if setting == "on" and device.type != "cuda":
        raise ConfigError(f"train.cuda_graphs = 'on' needs a CUDA device but this stage runs on "
                          f"{device}; use 'auto' (graphs where there is a GPU) or 'off'")
    return setting != "off" and device.type == "cuda"


class Stage:
    def __init__(self, stage_id: int, learners: list[nn.Module], options: StageOptions, total_steps: int,
                 device: torch.device, expect: UnitShape | None = None, replica_group=None):
        self.stage_id = stage_id
        self.expect = expect  # per-sample shapes arriving from the previous stage (None: not checked)
        self.unit_ids = [learner.index for learner in learners]
        self.device = device
        self.learners = nn.ModuleList(learners).to(device)
        # Replicas of this stage (pipeline/replicas/synced.py): whole-batch batch norm, summed gradients.
        self.replica_group = replica_group
        self.gradient_sum = GradientSum(replica_group) if replica_group is not None else None
        if replica_group is not None:
            sync_batchnorm(self.learners, replica_group)
        elif device.type == "cuda":  # kernels/batchnorm.py: past 2^31 elements, and lean on memory
            lean_batchnorms(self.learners)
        train = options.train
        self.channels_last = device.type == "cuda" and train.channels_last
        if self.channels_last:
            self.learners.to(memory_format=torch.channels_last)
        self.train_cfg = train
        self.grad_clip = options.grad_clip
        self.total_steps = total_steps
        self.sync_timeout_s = options.sync_timeout_s
        self.frozen = train.freeze_bodies
        if self.frozen:  # a linear probe: bodies keep their weights and batch-norm statistics
            for learner in self.learners:
                learner.body.requires_grad_(False)
        graphs = use_cuda_graphs(train.cuda_graphs, device)
        # One parameter group for the whole stage: one fused optimizer launch instead of one per
        # unit (every update is per parameter, so this changes no value).
        params = [p for p in self.learners.parameters() if p.requires_grad]
        self.optimizer = build_optimizer([{"params": params}], train, device, capturable=graphs)
        self.amp_dtype = autocast_dtype(train.precision, device)
        self.input_dtype = input_dtype(train.precision, learners[0], device)
        self.step = 0
        self.lr = 0.0
        # Device-side state the step updates in place (a CUDA graph replays on fixed addresses).
        n = len(learners)
        self._step_t = torch.zeros((), dtype=torch.long, device=device)
        self._first_bad_step = torch.full((n,), -1, dtype=torch.long, device=device)
        self._loss_sum = torch.zeros(n, device=device)
        self._correct_sum = torch.zeros(n, dtype=torch.long, device=device)
        # GPU time of the training steps (CUDA events around each): how busy the device really
        # is, which the host's waits cannot tell once the host runs ahead of it.
        self.gpu_busy_s = 0.0 if device.type == "cuda" else None
        self._step_events: list[tuple] = []
        self._reset_stats()
        # 'auto' leaves a long step eager (GRAPH_MAX_STEP_S); replicas all capture, as they must
        # replay the same collectives
        max_step_s = GRAPH_MAX_STEP_S if train.cuda_graphs == "auto" and replica_group is None else None
        self.graphed = GraphedStep(self._learn, self._reset_grads, device, self._prepare, max_step_s) if graphs else None

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
        if self.expect is not None:
            self._check(msg)
        msg = msg.to(self.device)  # a no-op when the previous stage shares the device
        self.learners.train()
        if self.frozen:
            for learner in self.learners:
                learner.body.eval()
        self.lr = lr_at(self.step, self.total_steps, self.train_cfg)
        set_lr(self.optimizer, self.lr)
        timed = self.gpu_busy_s is not None
        if timed:
            self._step_events.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
            self._step_events[-1][0].record(torch.cuda.current_stream(self.device))
        share = share_of(len(msg.y), msg.batch_size)
        if self.graphed is not None:  # it prepares x itself (into the graph's input)
            x, skips = self.graphed(msg.x, msg.skips, msg.y, share)
        else:
            x, skips = self._learn(self._prepare(msg.x), msg.skips, msg.y, share)
            self._reset_grads(True)
        if timed:
            self._step_events[-1][1].record(torch.cuda.current_stream(self.device))
        self._images += msg.batch_size
        self._steps_since_read += 1
        self.step += 1
        return msg.replace(x=x, skips=skips)

    def _learn(self, x: torch.Tensor, skips: tuple, y: torch.Tensor,
               share: float = 1.0) -> tuple[torch.Tensor, tuple]:
        """One training step of every learner on a batch (no host sync: a graph can replay it).
        `share`: this replica's rows over the batch's (1 unreplicated)."""
        losses, correct = [], []
        for learner in self.learners:
            with self._autocast():
                out = learner(x, skips, y, self.amp_dtype)
            # A backward per learner, right after its forward: its input is detached, so this
            # reaches only its own parameters, and its activations are freed before the next
            # learner runs. (Bit-identical to one backward over the sum of the losses.)
            loss = out.loss if self.gradient_sum is None else out.loss * share
            loss.backward()
            if self.gradient_sum is not None:  # summed over the replicas while the next learner runs
                self.gradient_sum.start(list(learner.parameters()))
            x, skips = out.x, out.skips
            losses.append(loss.detach().float())
            correct.append(out.correct)
        if self.gradient_sum is not None:
            self.gradient_sum.finish()
        if self.grad_clip > 0:
            for learner in self.learners:
                torch.nn.utils.clip_grad_norm_(learner.parameters(), self.grad_clip, foreach=True)
        self.optimizer.step()
        self._track(torch.stack(losses), torch.stack(correct))
        return x, skips

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

    def _track(self, loss_U: torch.Tensor, correct_U: torch.Tensor) -> None:
        # No host sync, and every update in place: sums and the first non-finite step stay on
        # the device until read_stats.
        self._loss_sum += loss_U
        self._correct_sum += correct_U
        bad = ~torch.isfinite(loss_U) & (self._first_bad_step < 0)
        self._first_bad_step.copy_(torch.where(bad, self._step_t, self._first_bad_step))
        self._step_t += 1

    def _reset_stats(self) -> None:
        self._loss_sum.zero_()
        self._correct_sum.zero_()
        self._images = 0
        self._steps_since_read = 0

    @property
    def pending_steps(self) -> int:
        """Steps trained since the statistics were last read."""
        return self._steps_since_read

    def sync(self, what: str = "a checkpoint") -> None:
        """Wait for the device's queued work, never longer than pipeline.timeout_s."""
        wait_for_device(self.device, self.sync_timeout_s, f"stage {self.stage_id}", what)

    def read_stats(self) -> list[dict]:
        """Mean loss and training accuracy of each learner since the last read (a host sync)."""
        self.sync("its metrics")
        if self.replica_group is not None:  # the whole batch's: weighted losses and counts summed
            for total in (self._loss_sum, self._correct_sum):
                torch.distributed.all_reduce(total, group=self.replica_group)
        if self._step_events:  # the device is idle now: every event has happened
            self.gpu_busy_s += sum(a.elapsed_time(b) for a, b in self._step_events) / 1000
            self._step_events.clear()
        first_bad = self._first_bad_step.tolist()  # note: a CPU-GPU sync point, on log steps only
        for unit, step in zip(self.unit_ids, first_bad):
            if step >= 0:
                raise TrainingError(
                    f"the loss of unit {unit} (stage {self.stage_id}) became non-finite at step "
                    f"{step}; lower train.lr, raise algo.temperature, set algo.grad_clip or use "
                    "algo.goodness = 'log_mean_square'")
        steps, images = max(1, self._steps_since_read), max(1, self._images)
        rows = [{"unit": unit, "loss": loss / steps, "accuracy": correct / images}
                for unit, loss, correct in zip(self.unit_ids, self._loss_sum.tolist(),
                                               self._correct_sum.tolist())]
        self._reset_stats()
        return rows

    def state_dict(self) -> dict:
        return {"learners": self.learners.state_dict(), "optimizer": self.optimizer.state_dict(),
                "step": self.step, "unit_ids": self.unit_ids}

    def load_state_dict(self, state: dict) -> None:
        self.learners.load_state_dict(state["learners"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.step = state["step"]
        self._step_t.fill_(self.step)
