"""The learners of a run: the model's units wrapped for the chosen algorithm.

'sff' gives one LocalUnit per unit, 'bp' one BPNetwork over all of them, 'ff' one FFUnit per MLP
layer. Weights depend only on the config's seed: every process of every backend builds the same
learners and keeps the ones its stage owns.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ffpipe import config as config_mod
from ffpipe.baselines.bp import BPNetwork
from ffpipe.baselines.classic_ff import FFUnit, prepare_eval, prepare_train
from ffpipe.checkpoint import common_step, load_stage
from ffpipe.config import Config
from ffpipe.errors import ConfigError
from ffpipe.ff.unit import LocalUnit
from ffpipe.models import build_units, dry_run
from ffpipe.pipeline.messages import Phase


def build_learners(cfg: Config, in_shape: tuple[int, ...], num_classes: int) -> list[nn.Module]:
    torch.manual_seed(cfg.train.seed)
    units = build_units(cfg.model, in_shape)
    shapes = dry_run(units, in_shape)
    if cfg.algo.name == "bp":
        learners = [BPNetwork(units, shapes[-1].channels, num_classes)]
    elif cfg.algo.name == "ff":
        learners = [FFUnit(i, u, num_classes, cfg.algo.ff_threshold) for i, u in enumerate(units)]
    else:
        learners = [LocalUnit(i, u, s.channels, num_classes, cfg.algo, cfg.model.head_kernel, s.flat)
                    for i, (u, s) in enumerate(zip(units, shapes))]
    if cfg.train.init_from:
        load_bodies(learners, cfg)
    return learners


def load_bodies(learners: list[nn.Module], cfg: Config) -> None:
    """Transfer: the unit bodies of the run in `train.init_from` (its newest checkpoints); heads
    and the BP classifier keep their fresh initialisation, for the new task."""
    source = Path(cfg.train.init_from)
    if not (source / "partition.json").is_file():
        raise ConfigError(f"train.init_from = {source} is not a run folder (no partition.json)")
    theirs = config_mod.load(source / "config.toml")
    for key in ("name", "granularity", "width", "depth"):
        if getattr(theirs.model, key) != getattr(cfg.model, key):
            raise ConfigError(f"train.init_from: that run's model.{key} is {getattr(theirs.model, key)!r}, "
                              f"this run's {getattr(cfg.model, key)!r}; they must be the same model")
    if (theirs.algo.name == "bp") != (cfg.algo.name == "bp"):
        raise ConfigError("train.init_from: BP bodies transfer to BP runs and unit bodies to SFF/FF runs")
    num_stages = len(json.loads((source / "partition.json").read_text())["starts"])
    step = common_step(source, num_stages)
    for k in range(num_stages):
        state = load_stage(source, k, step)
        for i, unit in enumerate(state["unit_ids"]):
            prefix = f"{i}.body."
            body = {n[len(prefix):]: t for n, t in state["learners"].items() if n.startswith(prefix)}
            learners[unit].body.load_state_dict(body)


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
