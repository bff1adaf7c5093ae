"""The BP network cut into stages for torch.distributed.pipelining (the GPipe and 1F1B peers).

The units of `BPNetwork.body` are split into contiguous stages balanced by forward FLOPs; the
last stage also holds the classifier (global mean pool + Linear) and the schedule applies the
cross-entropy. Stage modules keep BPNetwork's parameter names (`body.<unit>.*`, `classifier.*`),
so the stages' state dicts together are exactly a BPNetwork's.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ffpipe.baselines.bp import BPNetwork
from ffpipe.errors import ConfigError
from ffpipe.models import dry_run
from ffpipe.pipeline.partition import stage_starts

SCHEDULES = ("gpipe", "1f1b")


def unit_flops(units: list[nn.Module], in_shape: tuple[int, ...]) -> list[float]:
    """Forward FLOPs of each unit for one image, counted on the meta device (convolutions and
    matmuls only: norms and activations are memory-bound and small beside them)."""
    x = torch.empty((1, *in_shape), device="meta")
    skips: tuple = ()
    costs = []
    with torch.no_grad():
        for unit in units:
            with FlopCounterMode(display=False) as counter:
                x, skips = copy.deepcopy(unit).to("meta")(x, skips)
            costs.append(max(float(counter.get_total_flops()), 1.0))
    return costs


def split_units(units: list[nn.Module], in_shape: tuple[int, ...], num_stages: int) -> list[int]:
    """First unit of every stage, balanced by FLOPs; no skip tensor may cross a boundary (the
    schedules pass one activation tensor between stages)."""
    starts = stage_starts(len(units), num_stages, None, unit_flops(units, in_shape))
    shapes = dry_run(units, in_shape)
    for start in starts[1:]:
        if shapes[start - 1].skips:
            raise ConfigError(f"the pipelining peers pass one tensor between stages, but the split "
                              f"{starts} cuts a residual block before unit {start} (skip tensors "
                              "would cross stages); use model.granularity=block")
    return starts


class StageModule(nn.Module):
    """Units [start, stop) of a BPNetwork; the last stage ends with its pool and classifier."""

    def __init__(self, network: BPNetwork, start: int, stop: int, last: bool,
                 amp_dtype: torch.dtype | None, channels_last: bool):
        super().__init__()
        self.body = nn.ModuleDict({str(i): network.body[i] for i in range(start, stop)})
        self.classifier = network.classifier if last else None
        self.amp_dtype = amp_dtype
        self.channels_last = channels_last

    def _autocast(self, device_type: str):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.amp_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast(x.device.type):
            skips: tuple = ()
            for unit in self.body.values():
                x, skips = unit(x, skips)
            if self.classifier is None:
                return x
            features = x.mean(dim=(2, 3)) if x.dim() == 4 else x
            return self.classifier(features).float()  # logits_BC, as BPNetwork returns them


def cross_entropy(logits_BC: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits_BC, y)


def build_schedule(name: str, module: StageModule, stage_id: int, num_stages: int,
                   device: torch.device, microbatches: int):
    """A PipelineStage over `module` and its GPipe or 1F1B schedule (shapes are inferred from
    the first microbatch; the loss is the mean over each microbatch, and the schedule divides
    the gradients by the number of microbatches: the gradient of the whole batch's mean)."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    if name == "1f1b" and microbatches < num_stages:
        raise ConfigError(f"1F1B needs at least as many microbatches as stages: --microbatches "
                          f"{microbatches} < {num_stages} stages")
    stage = PipelineStage(module, stage_id, num_stages, device)
    cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[name]
    return cls(stage, n_microbatches=microbatches, loss_fn=cross_entropy)


def pipelined_forward_backward(schedule, first: bool, last: bool):
    """(x, y) -> the mean of the microbatch losses (last stage) or None: one schedule step,
    gradients accumulated into this stage's parameters."""
    def forward_backward(x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
        losses: list[torch.Tensor] = []
        args = (x,) if first else ()
        kwargs = {"target": y, "losses": losses} if last else {}
        schedule.step(*args, return_outputs=False, **kwargs)
        return torch.stack(losses).detach().mean() if last else None

    return forward_backward
