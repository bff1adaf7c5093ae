"""The learners of a run: the model's units wrapped for the chosen algorithm.

'sff' gives one LocalUnit per unit, 'bp' one BPNetwork over all of them, 'ff' one FFUnit per MLP
layer. Weights depend only on the config's seed: every process of every backend builds the same
learners and keeps the ones its stage owns.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ffpipe.baselines.bp import BPNetwork
from ffpipe.baselines.classic_ff import FFUnit
from ffpipe.config import AlgoConfig, Config
from ffpipe.ff.aux import make_aux
from ffpipe.ff.goodness import GoodnessHead
from ffpipe.ff.unit import LocalUnit
from ffpipe.models import build_units, dry_run


def build_learners(cfg: Config, in_shape: tuple[int, ...], num_classes: int) -> list[nn.Module]:
    torch.manual_seed(cfg.train.seed)
    units = build_units(cfg.model, in_shape, cfg.train.seed)
    shapes = dry_run(units, in_shape)
    if cfg.algo.name == "bp":
        heads = None  # built only when used: they draw from the seeded generator
        if cfg.algo.deep_supervision:
            heads = [sff_head(cfg, s, num_classes, head_depth(cfg.algo, i, len(units))) for i, s in enumerate(shapes)]
        return [BPNetwork(units, shapes[-1].channels, num_classes, heads, cfg.algo)]
    if cfg.algo.name == "ff":
        return [FFUnit(i, u, num_classes, cfg.algo.ff_threshold) for i, u in enumerate(units)]
    inputs = [in_shape, *(s.out for s in shapes[:-1])]
    return [LocalUnit(i, u, sff_head(cfg, s, num_classes, head_depth(cfg.algo, i, len(units))), cfg.algo,
                      make_aux(cfg.algo.aux, s.channels, math.prod(inp) if s.flat else inp[0], num_classes, s.flat))
            for i, (u, s, inp) in enumerate(zip(units, shapes, inputs))]


def head_depth(algo: AlgoConfig, index: int, num_units: int) -> int:
    """algo.head_depth, or with the 'decreasing' schedule from it at the first unit down to 0 at
    the last (early units get the stronger head: AugLocal, DGL)."""
    if algo.head_schedule == "constant" or num_units == 1:
        return algo.head_depth
    return round(algo.head_depth * (num_units - 1 - index) / (num_units - 1))


def sff_head(cfg: Config, shape, num_classes: int, depth: int) -> GoodnessHead:
    """The goodness head of a unit with this output shape (an SFF unit's, or BP's deep supervision)."""
    pool = cfg.algo.head_pool if cfg.algo.head == "pooled" else 0
    return GoodnessHead(shape.channels, num_classes, cfg.model.head_kernel, shape.flat, pool, depth)
