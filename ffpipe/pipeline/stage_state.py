"""A stage's state by unit: each unit's learner tensors and its optimizer state by parameter name.

A stage gives its optimizer the trainable parameters of its units in order (one parameter group);
every update is per parameter, so a unit's optimizer state can leave one stage and join another
(a run resumed on another layout) and the next step is the one it would have been.
"""
from __future__ import annotations

import torch
from torch import nn

from ffpipe.errors import CheckpointError
from ffpipe.ff.optim import load_optimizer_state

Slot = tuple[int, str]  # (unit, parameter name)


def trainable(learners: nn.ModuleList) -> tuple[list[Slot], list[nn.Parameter]]:
    """The optimizer's parameters, in the order the stage gives them, and their (unit, name)."""
    slots, params = [], []
    for learner in learners:
        for name, p in learner.named_parameters():
            if p.requires_grad:
                slots.append((learner.index, name))
                params.append(p)
    return slots, params


def unit_states(learners: nn.ModuleList, optimizer: torch.optim.Optimizer, slots: list[Slot]) -> dict[int, dict]:
    """{unit: {"learner": its tensors, "optimizer": {parameter name: its state}}}."""
    units = {learner.index: {"learner": learner.state_dict(), "optimizer": {}} for learner in learners}
    for i, state in optimizer.state_dict()["state"].items():
        unit, name = slots[i]
        units[unit]["optimizer"][name] = state
    return units


def load_unit_states(learners: nn.ModuleList, optimizer: torch.optim.Optimizer, slots: list[Slot],
                     units: dict[int, dict], step: int) -> None:
    for learner in learners:
        saved = units[learner.index]["learner"]
        check_fits(learner.index, saved, learner.state_dict(), step)
        learner.load_state_dict(saved)
    state = {i: units[unit]["optimizer"][name] for i, (unit, name) in enumerate(slots)
             if name in units[unit]["optimizer"]}
    load_optimizer_state(optimizer, {"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def check_fits(unit: int, saved: dict, own: dict, step: int) -> None:
    """A checkpoint of this unit of this model: the same tensors, of the same shapes."""
    where = f"the checkpoint of unit {unit} at step {step} does not fit this model"
    fix = "it is another model's (was model.* changed, or the folder's checkpoints replaced?)"
    missing, extra = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
    if missing or extra:
        what = f"it has no {missing[0]}" if missing else f"it holds {extra[0]}, which this model lacks"
        raise CheckpointError(f"{where}: {what}; {fix}")
    for name, tensor in own.items():
        theirs = saved[name]
        if isinstance(tensor, torch.Tensor) and tuple(theirs.shape) != tuple(tensor.shape):
            raise CheckpointError(f"{where}: {name} is {list(theirs.shape)} there and {list(tensor.shape)} "
                                  f"here; {fix}")
