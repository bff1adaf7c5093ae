"""Measured cost of each learner and of each possible stage boundary, for the stage split.

A learner's cost is the seconds of the stage's real training step run on it alone (forward,
local loss, backward, optimizer step; replayed as a CUDA graph where the stage would graph it)
at the run's batch size. A boundary's cost is the time to move what crosses it (the unit's
output and skip tensors, the labels) at the bandwidth measured between two of the run's
processes (torchrun: ranks 0 and 1, the link the stages will use); both stages beside a
boundary spend it. Only ratios matter to the split, so a few steps are enough.
"""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.distributed as dist
from torch import nn

from ffpipe.config import Config
from ffpipe.data import training_loader
from ffpipe.models import UnitShape
from ffpipe.pipeline.graphed import WARMUP_STEPS
from ffpipe.pipeline.messages import Message, Phase
from ffpipe.pipeline.stage import Stage, StageOptions, autocast_dtype
from ffpipe.pipeline.sync import synchronize

CPU_PROFILE_BATCH = 16  # on CPU the cost is linear in the batch: a small one keeps start-up short
LINK_BYTES = {"cuda": 64 << 20, "cpu": 4 << 20}


def profile_batch(cfg: Config, device: torch.device) -> int:
    return cfg.train.batch_size if device.type == "cuda" else min(cfg.train.batch_size, CPU_PROFILE_BATCH)


def measure_learner_costs(cfg: Config, learners: list[nn.Module], shapes: list[UnitShape],
                          in_shape: tuple[int, ...], num_classes: int, device: torch.device,
                          steps: int = 3) -> list[float]:
    """Seconds per training step of every learner (output `shapes` from models.dry_run), each
    on its own in a stage on `device`, at the run's batch size (on CPU: measured on a small
    batch and scaled, the cost being linear)."""
    batch = profile_batch(cfg, device)
    amp = autocast_dtype(cfg.train.precision, device)
    options = StageOptions.of(cfg)
    x = torch.randn(batch, *in_shape, device=device)
    skips: tuple = ()
    y = torch.randint(0, num_classes, (batch,), device=device)
    costs = []
    for learner, shape in zip(learners, shapes):
        stage = Stage(0, [copy.deepcopy(learner)], options, total_steps=1000, device=device)
        costs.append(time_steps(stage, Message(Phase.TRAIN, 0, 0, x=x, skips=skips, y=y), steps))
        del stage
        x = torch.randn(batch, *shape.out, device=device, dtype=amp or torch.float32)
        skips = tuple(torch.randn(batch, *s, device=device, dtype=amp or torch.float32) for s in shape.skips)
    return [c * cfg.train.batch_size / batch for c in costs]


def measure_loader_cost(cfg: Config, data, device: torch.device, dtype: torch.dtype | None = None,
                        batches: int = 4) -> tuple[float, bool]:
    """(seconds per training batch of stage 0's loader (gather, copy, crop, flip, normalise) at
    the run's batch size, scaled on CPU as the units; whether it decodes beside the step rather
    than in its way: `decodes_beside_step` of the loader)."""
    batch = profile_batch(cfg, device)
    loader = training_loader(data, cfg.data, batch, cfg.train.seed, device, dtype=dtype or torch.float32)
    stream = loader.batches(0)  # in stage 0's input dtype
    try:
        next(stream)  # warm-up
        synchronize(device)
        t0 = time.perf_counter()
        taken = sum(1 for _, _ in zip(range(batches), stream))
        synchronize(device)
    finally:
        stream.close()  # a streamed source's reader and decoding threads stop here, not at a later GC
    seconds = (time.perf_counter() - t0) / max(taken, 1) * cfg.train.batch_size / batch
    return seconds, loader.decodes_beside_step


def time_steps(stage: Stage, msg: Message, steps: int) -> float:
    """Seconds per training step of `stage` on `msg`, after its warm-up."""
    # Warm-up: allocation, kernel selection and (graphed) the eager steps and the capture.
    for _ in range(WARMUP_STEPS + 2 if stage.graphed is not None else 1):
        stage.train_step(msg)
    synchronize(stage.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        stage.train_step(msg)
    synchronize(stage.device)
    return (time.perf_counter() - t0) / steps


def boundary_bytes(cfg: Config, shapes: list[UnitShape], device: torch.device) -> list[int]:
    """Bytes that cross a cut after each unit (its output, its skips, the labels) per batch."""
    amp = autocast_dtype(cfg.train.precision, device)
    size = 2 if amp is not None else 4
    batch = cfg.train.batch_size
    return [batch * (size * (math.prod(s.out) + sum(math.prod(k) for k in s.skips)) + 8) for s in shapes]


def measure_link(device: torch.device, rounds: int = 4) -> float | None:
    """Seconds per byte from rank 0 to rank 1 and back, halved (collective: every rank calls it;
    ranks other than 0 get None, as does a run with one process)."""
    if not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    rank = dist.get_rank()
    if rank > 1:
        return None
    nbytes = LINK_BYTES["cuda" if device.type == "cuda" else "cpu"]
    buf = torch.zeros(nbytes // 4, dtype=torch.float32, device=device)
    peer = 1 - rank
    for i in range(rounds + 1):
        if i == 1:  # the first exchange sets the link up: not timed
            synchronize(device)
            t0 = time.perf_counter()
        if rank == 0:
            dist.send(buf, peer)
            dist.recv(buf, peer)
        else:
            dist.recv(buf, peer)
            dist.send(buf, peer)
    synchronize(device)
    return (time.perf_counter() - t0) / (2 * rounds * nbytes) if rank == 0 else None
