"""The learners of a run: the model's units wrapped for the chosen algorithm.

'sff' gives one LocalUnit per unit, 'bp' one BPNetwork over all of them, 'ff' one FFUnit per MLP
layer. Weights depend only on the config's seed: every process of every backend builds the same
learners and keeps the ones its stage owns.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ffpipe.baselines.bp import BPNetwork
from ffpipe.baselines.classic_ff import FFUnit, prepare_eval, prepare_train
from ffpipe.config import Config
from ffpipe.ff.unit import LocalUnit
from ffpipe.models import build_units, dry_run
from ffpipe.pipeline.messages import Phase


def build_learners(cfg: Config, in_shape: tuple[int, ...], num_classes: int) -> list[nn.Module]:
    torch.manual_seed(cfg.train.seed)
    units = build_units(cfg.model, in_shape)
    shapes = dry_run(units, in_shape)
    if cfg.algo.name == "bp":
        return [BPNetwork(units, shapes[-1].channels, num_classes)]
    if cfg.algo.name == "ff":
        return [FFUnit(i, u, num_classes, cfg.algo.ff_threshold) for i, u in enumerate(units)]
    return [LocalUnit(i, u, s.channels, num_classes, cfg.algo, cfg.model.head_kernel, s.flat)
            for i, (u, s) in enumerate(zip(units, shapes))]


InputTransform = Callable[[torch.Tensor, torch.Tensor, Phase, int], torch.Tensor]


def input_transform(cfg: Config, num_classes: int) -> InputTransform | None:
    """What stage 0 does to a batch before the first unit: classic FF overlays labels."""
    if cfg.algo.name != "ff":
        return None
    seed = cfg.train.seed

    def transform(x: torch.Tensor, y: torch.Tensor, phase: Phase, step: int) -> torch.Tensor:
        if phase is Phase.EVAL:
            return prepare_eval(x, num_classes)
        # One generator per step: the negatives of step s are the same on every backend and resume.
        gen = torch.Generator(device=x.device).manual_seed(seed * 1_000_003 + step)
        return prepare_train(x, y, num_classes, gen)

    return transform
