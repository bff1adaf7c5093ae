"""Measured cost of each learner: a few timed training steps on a batch of the right shape.

The partition balances these costs; only their ratios matter, so a few steps are enough.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

from ffpipe.config import Config
from ffpipe.models import dry_run
from ffpipe.pipeline.stage import autocast_dtype
from ffpipe.pipeline.sync import synchronize

CPU_PROFILE_BATCH = 16  # on CPU the cost is linear in the batch: a small one keeps start-up short


def measure_learner_costs(cfg: Config, learners: list[nn.Module], in_shape: tuple[int, ...],
                          num_classes: int, device: torch.device, steps: int = 3) -> list[float]:
    """Seconds per training step (forward, local loss, backward) of every learner, on `device`."""
    batch = cfg.train.batch_size if device.type == "cuda" else min(cfg.train.batch_size, CPU_PROFILE_BATCH)
    bodies = [learner.body for learner in learners]
    shapes = dry_run(bodies, in_shape)
    amp = autocast_dtype(cfg.train.precision, device)
    costs = []
    x = torch.randn(batch, *in_shape, device=device)
    skips: tuple = ()
    y = torch.randint(0, num_classes, (batch,), device=device)
    for learner, shape in zip(learners, shapes):
        learner = copy.deepcopy(learner).to(device)
        costs.append(_time_steps(learner, x, skips, y, amp, steps))
        x = torch.randn(batch, *shape.out, device=device, dtype=amp or torch.float32)
        skips = tuple(torch.randn(batch, *s, device=device) for s in shape.skips)
        del learner
    return costs


def _time_steps(learner: nn.Module, x, skips, y, amp, steps: int) -> float:
    def step():
        with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
            out = learner(x, skips, y, amp)
        out.loss.backward()

    step()  # warm-up: first-call allocation and kernel selection stay out of the timing
    synchronize(x.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(x.device)
    return (time.perf_counter() - t0) / steps
