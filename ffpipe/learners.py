"""The learners of a run: the model's units wrapped for the chosen algorithm.

'sff' gives one LocalUnit per unit, 'bp' one BPNetwork over all of them, 'ff' one FFUnit per MLP
layer. Weights depend only on the config's seed: every process of every backend builds the same
learners and keeps the ones its stage owns.
"""
from __future__ import annotations

import torch
from torch import nn

from ffpipe.baselines.bp import BPNetwork
from ffpipe.baselines.classic_ff import FFUnit
from ffpipe.config import Config
from ffpipe.ff.unit import LocalUnit
from ffpipe.models import build_units, dry_run


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
