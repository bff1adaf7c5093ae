"""Per-stage checkpoints: each stage saves its learners, optimizer and position on its own.

checkpoints/stage-<k>/step-<n>.pt holds stage k after n optimizer steps (it has applied batches
0..n-1). Stages run ahead of each other by a few batches, so each keeps its last few; a run
resumes from the newest step that every stage has, readable.

A checkpoint is written to a temporary name (flushed to disk where it is local) and renamed, so a
file under its final name is whole; one that cannot be read anyway (a damaged disk, a copy cut short) is
skipped with a warning that names it, and the run resumes from the step before. Checkpoints
hold tensors and plain values only and load with `weights_only=True`: a run folder from someone
else cannot run code.
"""
from __future__ import annotations

import io
import re
import sys

import torch

from ffpipe.errors import FFPipeError
from ffpipe.run.folder import RunFolder

_NAME = re.compile(r"step-(\d+)\.pt$")


def stage_dir(stage_id: int) -> str:
    return f"checkpoints/stage-{stage_id}"


def checkpoint_name(stage_id: int, step: int) -> str:
    """Its name inside the run folder."""
    return f"{stage_dir(stage_id)}/step-{step:09d}.pt"


def saved_steps(folder: RunFolder, stage_id: int) -> list[int]:
    return sorted(int(m.group(1)) for name in folder.store.list(stage_dir(stage_id)) if (m := _NAME.search(name)))


def save_stage(folder: RunFolder, stage_id: int, state: dict, epoch: int, keep: int = 3) -> str:
    """Write whole or not at all (the store's temporary name, then a rename), then drop all but
    the newest `keep`."""
    step = state["step"]
    name = checkpoint_name(stage_id, step)
    record = {**state, "stage_id": stage_id, "epoch": epoch, "last_step_applied": step - 1}
    folder.store.write(name, lambda f: torch.save(record, f))
    for old in saved_steps(folder, stage_id)[:-keep]:
        folder.store.delete(checkpoint_name(stage_id, old))
    return name


def load_stage(folder: RunFolder, stage_id: int, step: int, map_location="cpu", mmap: bool = False) -> dict:
    """Stage `stage_id` after `step` steps; with `mmap` (a local folder) the tensors stay on disk
    until used."""
    name, store = checkpoint_name(stage_id, step), folder.store
    if not store.exists(name):
        raise FFPipeError(f"no checkpoint of stage {stage_id} at step {step} in {folder}/checkpoints; "
                          "the run folder is incomplete (was the run stopped before its first checkpoint?)")
    local = store.local_path(name)
    try:
        if local is not None:
            return torch.load(local, map_location=map_location, weights_only=True, mmap=mmap)
        # whole, in one read: torch.load's many small reads would each be a request to the store
        return torch.load(io.BytesIO(store.read_bytes(name)), map_location=map_location, weights_only=True)
    except Exception as err:  # a damaged file or one holding code: name it, no pickle traceback
        raise FFPipeError(f"checkpoint {folder}/{name} cannot be read ({str(err).splitlines()[0][:200]}); "
                          "delete it to fall back to the one before") from None


def unit_states(folder: RunFolder, step: int) -> dict[int, dict]:
    """Every unit's tensors (its learner's: body, head, aux) after `step` steps, keyed by unit,
    whatever stages held them: what evaluation, transfer and the tests load."""
    units = {}
    for k in range(len(folder.partition())):
        state = load_stage(folder, k, step)
        for i, unit in enumerate(state["unit_ids"]):
            prefix = f"{i}."  # the stage's learners are a ModuleList: '<its index>.<name>'
            units[unit] = {name[len(prefix):]: t for name, t in state["learners"].items() if name.startswith(prefix)}
    return units


def resume_step(folder: RunFolder, num_stages: int) -> int | None:
    """The newest step every stage has a readable checkpoint of (None: there is none).

    A step whose checkpoint of some stage cannot be read is skipped with a warning naming the
    file, and the step before is tried: a run killed while saving resumes, a little earlier.
    """
    common = set(saved_steps(folder, 0))
    for k in range(1, num_stages):
        common &= set(saved_steps(folder, k))
    for step in sorted(common, reverse=True):
        bad = [k for k in range(num_stages) if not _readable(folder, k, step)]
        if not bad:
            return step
        print(f"ffpipe: warning: checkpoint {folder}/{checkpoint_name(bad[0], step)} cannot be read; "
              "resuming from the step before", file=sys.stderr)
    return None


def _readable(folder: RunFolder, stage_id: int, step: int) -> bool:
    """Whole and safe to load: its index and every record it names parse (on a local disk
    without reading the tensors in: each stage process loads its own checkpoint afterwards)."""
    try:
        load_stage(folder, stage_id, step, mmap=True)
        return True
    except FFPipeError:
        return False
