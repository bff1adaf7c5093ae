"""Per-stage checkpoints: each stage saves its learners, optimizer and position on its own.

checkpoints/stage-<k>/step-<n>.pt holds stage k after n optimizer steps (it has applied batches
0..n-1). Stages run ahead of each other by a few batches, so each keeps its last few; a run
resumes from the newest step that every stage has, readable.

A checkpoint is written to a temporary name, flushed to disk and renamed, so a file under its
final name is whole; one that cannot be read anyway (a damaged disk, a copy cut short) is
skipped with a warning that names it, and the run resumes from the step before. Checkpoints
hold tensors and plain values only and load with `weights_only=True`: a run folder from someone
else cannot run code.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch

from ffpipe.errors import FFPipeError
from ffpipe.run.folder import RunFolder

_NAME = re.compile(r"step-(\d+)\.pt$")


def stage_dir(folder: RunFolder, stage_id: int) -> Path:
    return folder.checkpoints_dir / f"stage-{stage_id}"


def checkpoint_path(folder: RunFolder, stage_id: int, step: int) -> Path:
    return stage_dir(folder, stage_id) / f"step-{step:09d}.pt"


def saved_steps(folder: RunFolder, stage_id: int) -> list[int]:
    path = stage_dir(folder, stage_id)
    if not path.is_dir():
        return []
    return sorted(int(m.group(1)) for p in path.iterdir() if (m := _NAME.search(p.name)))


def save_stage(folder: RunFolder, stage_id: int, state: dict, epoch: int, keep: int = 3) -> Path:
    """Write atomically (temporary file, fsync, rename), then drop all but the newest `keep`."""
    step = state["step"]
    path = checkpoint_path(folder, stage_id, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        torch.save({**state, "stage_id": stage_id, "epoch": epoch, "last_step_applied": step - 1}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for old in saved_steps(folder, stage_id)[:-keep]:
        checkpoint_path(folder, stage_id, old).unlink(missing_ok=True)
    return path


def load_stage(folder: RunFolder, stage_id: int, step: int, map_location="cpu", mmap: bool = False) -> dict:
    """Stage `stage_id` after `step` steps; with `mmap` the tensors stay on disk until used."""
    path = checkpoint_path(folder, stage_id, step)
    if not path.is_file():
        raise FFPipeError(f"no checkpoint of stage {stage_id} at step {step} in {folder.checkpoints_dir}; "
                          "the run folder is incomplete (was the run stopped before its first checkpoint?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # a damaged file or one holding code: name it, no pickle traceback
        raise FFPipeError(f"checkpoint {path} cannot be read ({str(err).splitlines()[0][:200]}); "
                          "delete it to fall back to the one before") from None


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
        print(f"ffpipe: warning: checkpoint {checkpoint_path(folder, bad[0], step)} cannot be read; "
              "resuming from the step before", file=sys.stderr)
    return None


def _readable(folder: RunFolder, stage_id: int, step: int) -> bool:
    """Whole and safe to load: its index and every record it names parse (without reading the
    tensors in: each stage process loads its own checkpoint afterwards)."""
    try:
        load_stage(folder, stage_id, step, mmap=True)
        return True
    except FFPipeError:
        return False
