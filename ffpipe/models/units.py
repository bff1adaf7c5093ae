"""The unit: one piece of a network that learns on its own, and the dry run that sizes it.

Every unit maps (x, skips) -> (out, skips). `skips` is a tuple used as a stack of detached tensors:
at `layer` granularity the first unit of a residual block pushes the block's input, and the unit
that closes the block pops it and adds it (through the block's shortcut). At `block` granularity
a unit is a whole block and the stack passes through untouched.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


class SkipUnit(nn.Module):
    """body(x), optionally pushing x onto the skip stack or popping a skip to add before `post`."""

    def __init__(self, body: nn.Module, push_skip: bool = False, pop_skip: bool = False,
                 shortcut: nn.Module | None = None, post: nn.Module | None = None):
        super().__init__()
        self.body = body
        self.push_skip = push_skip
        self.pop_skip = pop_skip
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.post = post if post is not None else nn.Identity()

    def forward(self, x: torch.Tensor, skips: tuple = ()) -> tuple[torch.Tensor, tuple]:
        if self.push_skip:
            skips = skips + (x,)
        out = self.body(x)
        if self.pop_skip:
            *rest, skip = skips
            skips = tuple(rest)
            out = out + self.shortcut(skip)
        return self.post(out), skips


@dataclass(frozen=True)
class UnitShape:
    """Output shape of one unit (without batch) and the shapes on its skip stack after it."""
    out: tuple[int, ...]
    skips: tuple[tuple[int, ...], ...]

    @property
    def channels(self) -> int:
        return self.out[0]

    @property
    def flat(self) -> bool:
        return len(self.out) == 1


def dry_run(units: list[nn.Module], in_shape: tuple[int, ...]) -> list[UnitShape]:
    """Run copies of the units on the meta device: shapes without memory or arithmetic."""
    x = torch.empty((2, *in_shape), device="meta")
    skips: tuple = ()
    shapes = []
    with torch.no_grad():
        for unit in units:
            x, skips = copy.deepcopy(unit).to("meta")(x, skips)
            shapes.append(UnitShape(tuple(x.shape[1:]), tuple(tuple(s.shape[1:]) for s in skips)))
    return shapes


def adapt_stem(conv: nn.Conv2d, in_channels: int, kernel_size: int | None = None,
               stride: int | None = None) -> nn.Conv2d:
    """A stem conv like `conv` but for `in_channels` inputs (1-channel images) or a smaller
    kernel/stride (small images); returns `conv` itself when nothing changes."""
    k = kernel_size or conv.kernel_size[0]
    s = stride or conv.stride[0]
    if (in_channels, k, s) == (conv.in_channels, conv.kernel_size[0], conv.stride[0]):
        return conv
    return nn.Conv2d(in_channels, conv.out_channels, k, stride=s, padding=k // 2,
                     bias=conv.bias is not None)


def by_resolution(blocks: list[SkipUnit], in_shape: tuple[int, ...]) -> list[SkipUnit]:
    """Block units joined into one unit per resolution stage: consecutive blocks whose outputs
    have the same height and width (the stem joins the blocks that keep its output's size)."""
    shapes = dry_run(blocks, in_shape)
    groups: list[list[SkipUnit]] = []
    for i, block in enumerate(blocks):
        if i and shapes[i].out[1:] == shapes[i - 1].out[1:]:
            groups[-1].append(block)
        else:
            groups.append([block])
    return [SkipUnit(nn.Sequential(*(b.body for b in group))) for group in groups]


def with_dropout(units: list[SkipUnit], p: float, seed: int) -> list[SkipUnit]:
    """Each unit's output through channel dropout while training, unit i drawing its masks from a
    generator of its own (seeded by `seed` and i)."""
    if p:
        for i, unit in enumerate(units):
            unit.post = nn.Sequential(unit.post, ChannelDropout(p, seed * 1_000_003 + i))
    return units


class ChannelDropout(nn.Module):
    """Dropout of whole channels (Dropout2d; of features for flat inputs) whose masks come from
    the module's own generator on the host: a unit draws the same masks whichever units share its
    process (every backend learns what the sequential trainer learns), and its checkpoint holds
    the generator's state (a resumed run draws on where it stopped). The masks are B x C, drawn
    on the host per step: a CUDA graph would replay one mask, so stages with dropout run eagerly."""

    def __init__(self, p: float, seed: int):
        super().__init__()
        self.p = p
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.rand(x.shape[:2], generator=self.generator) >= self.p
        mask = keep.to(device=x.device, dtype=x.dtype, non_blocking=True) / (1 - self.p)
        return x * mask.view(*x.shape[:2], *[1] * (x.dim() - 2))

    def get_extra_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state.cpu())
