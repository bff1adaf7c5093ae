"""Per-stage checkpoints: each stage saves its learners, optimizer and position on its own."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ffpipe.errors import FFPipeError


def checkpoint_path(run_dir: Path, stage_id: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"stage-{stage_id}.pt"


def save_stage(run_dir: Path, stage_id: int, state: dict, epoch: int, next_step: int) -> Path:
    """Write atomically (temp file + rename): a crash mid-write leaves the previous checkpoint."""
    path = checkpoint_path(run_dir, stage_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({**state, "stage_id": stage_id, "epoch": epoch, "next_step": next_step}, tmp)
    os.replace(tmp, path)
    return path


def load_stage(run_dir: Path, stage_id: int, map_location="cpu") -> dict:
    path = checkpoint_path(run_dir, stage_id)
    if not path.is_file():
        raise FFPipeError(f"no checkpoint for stage {stage_id} at {path}; the run folder is "
                          "incomplete (was the run stopped before its first checkpoint?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # a damaged file: name it instead of a pickle traceback
        raise FFPipeError(f"checkpoint {path} cannot be read ({err}); delete it to start over") from None
