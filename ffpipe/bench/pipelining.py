"""The BP network cut into stages for torch.distributed.pipelining (the GPipe, 1F1B,
interleaved 1F1B and zero-bubble peers).

The units of `BPNetwork.body` are split into contiguous stages balanced by forward FLOPs; the
last stage also holds the classifier (global mean pool + Linear) and the schedule applies the
cross-entropy. GPipe and 1F1B put one stage on each of N ranks; the interleaved schedules cut the
units into 2N stages, two per rank: rank r holds stages r and r + N (interleaved 1F1B and
interleaved zero bubble, "loop" order) or r and 2N - 1 - r (ZBV, "V" order: rank 0 holds the first
and the last). Stage modules keep BPNetwork's parameter names (`body.<unit>.*`, `classifier.*`),
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
from ffpipe.bench import SCHEDULES
from ffpipe.errors import ConfigError
from ffpipe.models import dry_run
from ffpipe.pipeline.partition import stage_starts

# the peer's name -> torch's schedule class; the last three exist from torch 2.6 on (checked by
# available_schedules(), as the GPU machines may run an older torch than this one)
SCHEDULE_CLASSES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B", "interleaved-1f1b": "ScheduleInterleaved1F1B",
                    "zb-interleaved": "ScheduleInterleavedZeroBubble", "zbv": "ScheduleZBVZeroBubble"}
assert tuple(SCHEDULE_CLASSES) == SCHEDULES


def available_schedules() -> tuple[str, ...]:
    """The schedules the installed torch has."""
    import torch.distributed.pipelining as pipelining

    return tuple(name for name, cls in SCHEDULE_CLASSES.items() if hasattr(pipelining, cls))


def local_stage_ids(name: str, rank: int, world: int) -> list[int]:
    """The stages rank `rank` holds under schedule `name` (of world or 2 * world stages)."""
    if name in ("gpipe", "1f1b"):
        return [rank]
    if name == "zbv":
        return [rank, 2 * world - 1 - rank]
    return [rank, rank + world]


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


class RankStages(nn.Module):
    """This rank's stage modules as one module for the optimizer and the state dict: their units
    under `body.<unit>` and the classifier where one of them ends the network."""

    def __init__(self, modules: list[StageModule]):
        super().__init__()
        self.body = nn.ModuleDict({k: unit for m in modules for k, unit in m.body.items()})
        classifiers = [m.classifier for m in modules if m.classifier is not None]
        self.classifier = classifiers[0] if classifiers else None


def build_schedule(name: str, modules: list[StageModule], stage_ids: list[int], num_stages: int,
                   device: torch.device, microbatches: int):
    """A PipelineStage over each of this rank's `modules` and the schedule `name` over them
    (shapes are inferred from the first microbatch; the loss is the mean over each microbatch,
    and the schedule divides the gradients by the number of microbatches: the gradient of the
    whole batch's mean)."""
    import torch.distributed.pipelining as pipelining

    ranks = num_stages // len(modules)
    if name != "gpipe" and microbatches < ranks:
        raise ConfigError(f"{name} needs at least as many microbatches as ranks: --microbatches "
                          f"{microbatches} < {ranks}")
    if not hasattr(pipelining, SCHEDULE_CLASSES[name]):
        raise ConfigError(f"torch {torch.__version__} has no {SCHEDULE_CLASSES[name]}: choose from "
                          f"{', '.join(available_schedules())}")
    stages = [pipelining.PipelineStage(m, i, num_stages, device) for m, i in zip(modules, stage_ids)]
    cls = getattr(pipelining, SCHEDULE_CLASSES[name])
    return cls(stages[0] if len(stages) == 1 else stages, n_microbatches=microbatches, loss_fn=cross_entropy)


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
