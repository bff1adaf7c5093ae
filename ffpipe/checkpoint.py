"""Per-stage checkpoints: each stage saves its learners, optimizer and position on its own.

checkpoints/stage-<k>/step-<n>.pt holds stage k after n optimizer steps (it has applied batches
0..n-1). Stages run ahead of each other by a few batches, so each keeps its last few checkpoints;
a resumed run starts from the newest step that every stage has.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ffpipe.errors import FFPipeError

_NAME = re.compile(r"step-(\d+)\.pt$")


def stage_dir(run_dir: Path, stage_id: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"stage-{stage_id}"


def saved_steps(run_dir: Path, stage_id: int) -> list[int]:
    folder = stage_dir(run_dir, stage_id)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.search(p.name)))


def save_stage(run_dir: Path, stage_id: int, state: dict, epoch: int, keep: int = 3) -> Path:
    """Write atomically (temp file + rename), then drop all but the newest `keep`."""
    step = state["step"]
    folder = stage_dir(run_dir, stage_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:09d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save({**state, "stage_id": stage_id, "epoch": epoch, "last_step_applied": step - 1}, tmp)
    os.replace(tmp, path)
    for old in saved_steps(run_dir, stage_id)[:-keep]:
        (folder / f"step-{old:09d}.pt").unlink(missing_ok=True)
    return path


def common_step(run_dir: Path, num_stages: int) -> int | None:
    """The newest step that every stage has a checkpoint of (None: not one in common)."""
    common = None
    for k in range(num_stages):
        steps = set(saved_steps(run_dir, k))
        common = steps if common is None else common & steps
    return max(common) if common else None


def load_stage(run_dir: Path, stage_id: int, step: int | None = None, map_location="cpu") -> dict:
    steps = saved_steps(run_dir, stage_id)
    if step is None and steps:
        step = steps[-1]
    path = stage_dir(run_dir, stage_id) / f"step-{(step or 0):09d}.pt"
    if step is None or not path.is_file():
        raise FFPipeError(f"no checkpoint of stage {stage_id} at step {step} in {run_dir}/checkpoints; "
                          "the run folder is incomplete (was the run stopped before its first checkpoint?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # a damaged file: name it instead of a pickle traceback
        raise FFPipeError(f"checkpoint {path} cannot be read ({err}); delete it to fall back to "
                          "the one before") from None
