"""Optimizers and the learning-rate schedule shared by SFF units and the BP baseline.

A stage keeps one optimizer over all its units: every update is per parameter, so this computes
exactly what one optimizer per unit would, with far fewer kernel launches.
"""
from __future__ import annotations

import math
import warnings

import torch

from ffpipe.config import TrainConfig

# Kept per group across a checkpoint load, which would otherwise bring back the saving run's
# choices (a CPU run's foreach, a float lr where a CUDA graph reads a tensor).
_IMPLEMENTATION_KEYS = ("lr", "fused", "foreach", "capturable")

# Graphed stages take a few eager warm-up steps with the capturable optimizer they will capture.
warnings.filterwarnings("ignore", message=".*capturable=True.*without CUDA graph capture.*")


def build_optimizer(param_groups: list[dict], cfg: TrainConfig, device: torch.device,
                    capturable: bool = False) -> torch.optim.Optimizer:
    """Fused kernels on GPU (one launch for all parameters), foreach on CPU. The choice depends on
    the device type only, so every backend on the same kind of device computes the same bits.

    On GPU the learning rate is a one-element device tensor shared by every group, so the
    schedule can move it without a host sync and a CUDA graph of the step reads its current
    value; `capturable` (Adam/AdamW) keeps the optimizer's step counts on the device too.
    """
    if device.type == "cuda":
        lr = torch.tensor(cfg.lr, dtype=torch.float32, device=device)
        impl = {"fused": True}
    else:
        lr, impl = cfg.lr, {"foreach": True}
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(param_groups, lr=lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay, **impl)
    else:
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        if device.type == "cuda":
            impl["capturable"] = capturable
        optimizer = cls(param_groups, lr=lr, weight_decay=cfg.weight_decay, **impl)
    return optimizer


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The saved moments and step counts, with this optimizer's own implementation settings."""
    own = [{k: g[k] for k in _IMPLEMENTATION_KEYS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(_merged_groups(state, len(optimizer.param_groups)))
    for group, keep in zip(optimizer.param_groups, own):
        group.update(keep)


def _merged_groups(state: dict, num_groups: int) -> dict:
    """Checkpoints written before stages used one parameter group held one group per unit, over
    the same parameters in the same order: join them (the hyper-parameters are the same)."""
    groups = state["param_groups"]
    if num_groups != 1 or len(groups) <= 1:
        return state
    merged = {**groups[0], "params": [i for g in groups for i in g["params"]]}
    return {**state, "param_groups": [merged]}


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
    """Every group's lr; a device tensor is filled in place (queued on the stream, no sync)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
