"""Classic Forward-Forward (Hinton 2022) for MLPs: the historical baseline.

The label is written over the first `num_classes` input values. A training batch holds the positive
copies (true label) followed by as many negative copies (a random wrong label); each layer learns to
give positives a goodness (mean of squared activations) above a threshold and negatives one below
it. To predict, every label is overlaid in turn and each layer's goodness per label is its vote.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ffpipe.config import Config
from ffpipe.ff.unit import UnitOutput

EPS = 1e-8


def overlay(x_BD: torch.Tensor, labels_B: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Flattened inputs with a one-hot label (at each sample's largest value) in front."""
    out = x_BD.clone()
    out[:, :num_classes] = 0
    out[torch.arange(len(out), device=out.device), labels_B] = x_BD.amax(dim=1)
    return out


def prepare_train(x: torch.Tensor, y: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """[positives; negatives]: 2B rows, the negatives with a uniformly drawn wrong label."""
    flat = x.flatten(1)
    shift = torch.randint(1, num_classes, y.shape, device=y.device, generator=generator)
    return torch.cat([overlay(flat, y, num_classes), overlay(flat, (y + shift) % num_classes, num_classes)])


def prepare_eval(x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C*B rows: the batch with label 0 overlaid, then label 1, ..."""
    flat = x.flatten(1)
    rows = [overlay(flat, torch.full((len(flat),), c, device=flat.device), num_classes)
            for c in range(num_classes)]
    return torch.cat(rows)


class FFUnit(nn.Module):
    def __init__(self, index: int, body: nn.Module, num_classes: int, threshold: float):
        super().__init__()
        self.index = index
        self.body = body
        self.num_classes = num_classes
        self.threshold = threshold

    def forward(self, x: torch.Tensor, skips: tuple, y: torch.Tensor | None = None,
                out_dtype: torch.dtype | None = None) -> UnitOutput:
        # Normalise the input's length (to unit root-mean-square) so this layer cannot read the
        # previous layer's goodness, only the direction of its activity.
        h, skips = self.body(x / (x.pow(2).mean(dim=1, keepdim=True).sqrt() + EPS), skips)
        g = h.float().pow(2).mean(dim=1)
        loss = correct = None
        if y is not None:
            g_pos, g_neg = g.chunk(2)
            loss = F.softplus(self.threshold - g_pos).mean() + F.softplus(g_neg - self.threshold).mean()
            correct = (g_pos > g_neg).sum()
            scores_BC = torch.stack([g_neg, g_pos], dim=1)
        else:
            scores_BC = g.view(self.num_classes, -1).t()
        x_next = h.detach()
        if out_dtype is not None:
            x_next = x_next.to(out_dtype)
        return UnitOutput(x_next, skips, scores_BC, loss, correct)

    def vote(self, scores_BC: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores_BC, dim=1)


def input_transform(cfg: Config, num_classes: int):
    """What stage 0 does to a batch before the first unit (pipeline/source.py InputTransform):
    classic FF overlays labels (other algorithms take the batch as it is: None)."""
    if cfg.algo.name != "ff":
        return None
    seed = cfg.train.seed

    def transform(x: torch.Tensor, y: torch.Tensor, training: bool, step: int) -> torch.Tensor:
        if not training:  # an evaluation batch (test or validation)
            return prepare_eval(x, num_classes)
        # One generator per step: the negatives of step s are the same on every backend and resume.
        gen = torch.Generator(device=x.device).manual_seed(seed * 1_000_003 + step)
        return prepare_train(x, y, num_classes, gen)

    return transform
