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
