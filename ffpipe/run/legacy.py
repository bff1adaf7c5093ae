"""Run folders of the earlier checkpoint layout: checkpoints/stage-<k>/step-<n>.pt, one file per
stage holding its learners' tensors ('<i>.<name>', i the unit's place in the stage), its
optimizer's state by parameter index and `unit_ids`.

They resume, evaluate and transfer as they are: read here into the unit-keyed form of
run/checkpoints.py, each optimizer state named by its parameter (the stage gave its optimizer the
trainable parameters of its units in order: `trainable(unit)` lists them). A resumed run writes
the unit-keyed form from then on.
"""
from __future__ import annotations

import io
import re
import sys
from typing import Callable


from ffpipe.errors import FFPipeError
from ffpipe.run.folder import RunFolder

_NAME = re.compile(r"^step-(\d+)\.pt$")


def _stage_dirs(folder: RunFolder) -> list[int]:
    """The stages that have a checkpoint folder, 0, 1, ... (the earlier layout's split)."""
    stages = []
    while folder.store.list(f"checkpoints/stage-{len(stages)}"):
        stages.append(len(stages))
    return stages


def _name(stage_id: int, step: int) -> str:
    return f"checkpoints/stage-{stage_id}/step-{step:09d}.pt"


def _steps(folder: RunFolder, stage_id: int) -> list[int]:
    return sorted(int(m.group(1)) for n in folder.store.list(f"checkpoints/stage-{stage_id}") if (m := _NAME.match(n)))


def has_checkpoints(folder: RunFolder) -> bool:
    return bool(_stage_dirs(folder))


def resume_step(folder: RunFolder, num_units: int, whole: Callable[[RunFolder, str], bool]) -> int | None:
    """The newest step every stage saved whole and that holds every unit (None: none)."""
    stages = _stage_dirs(folder)
    if not stages:
        return None
    common = set.intersection(*(set(_steps(folder, k)) for k in stages))
    for step in sorted(common, reverse=True):
        damaged = [k for k in stages if not whole(folder, _name(k, step))]
        if damaged:
            print(f"ffpipe: warning: checkpoint {folder}/{_name(damaged[0], step)} is damaged; resuming "
                  "from the step before", file=sys.stderr)
            continue
        held = sorted(u for k in stages for u in _load(folder, _name(k, step))["unit_ids"])
        return step if held == list(range(num_units)) else None
    return None


def read_units(folder: RunFolder, step: int, wanted, trainable: Callable[[int], list[str]] | None = None,
               map_location="cpu") -> dict[int, dict]:
    """The units `wanted` after `step` steps; their optimizer states only with `trainable`."""
    out = {}
    for k in _stage_dirs(folder):
        record = _load(folder, _name(k, step), map_location)
        if set(record["unit_ids"]) & set(wanted):
            out.update(_units_of(record, trainable))
    return {u: s for u, s in out.items() if u in wanted}


def _units_of(record: dict, trainable: Callable[[int], list[str]] | None) -> dict[int, dict]:
    units = {}
    for i, unit in enumerate(record["unit_ids"]):
        prefix = f"{i}."
        learner = {n[len(prefix):]: t for n, t in record["learners"].items() if n.startswith(prefix)}
        units[unit] = {"learner": learner, "optimizer": {}}
    if trainable is not None:
        slots = [(unit, name) for unit in record["unit_ids"] for name in trainable(unit)]
        order = [i for g in record["optimizer"]["param_groups"] for i in g["params"]]  # one group or one per unit
        for (unit, name), index in zip(slots, order):
            if index in record["optimizer"]["state"]:
                units[unit]["optimizer"][name] = record["optimizer"]["state"][index]
    return units


def _load(folder: RunFolder, name: str, map_location="cpu") -> dict:
    import torch  # here: listing run folders (ffpipe runs) needs no torch

    try:
        return torch.load(io.BytesIO(folder.store.read_bytes(name)), map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged file or one holding code: name it
        raise FFPipeError(f"checkpoint {folder}/{name} cannot be read ({str(err).splitlines()[0][:200]})") from None
