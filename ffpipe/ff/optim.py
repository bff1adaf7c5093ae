"""Optimizers and the learning-rate schedule shared by SFF units and the BP baseline.

A stage keeps one optimizer with one parameter group per unit: every update is per parameter,
so this computes exactly what one optimizer per unit would, with far fewer kernel launches.
"""
from __future__ import annotations

import math

import torch

from ffpipe.config import TrainConfig


def build_optimizer(param_groups: list[dict], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # Fused kernels on GPU (one launch for all parameters); foreach on CPU. The choice depends on
    # the device type only, so every backend on the same kind of device computes the same bits.
    impl = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, **impl)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **impl)


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up over warmup_fraction of the steps, then cosine to zero (or constant)."""
    warmup = int(cfg.warmup_fraction * total_steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warmup) / max(1, total_steps - warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
