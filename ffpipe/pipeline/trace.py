"""An opt-in profile of a few training steps of every stage, to see where a stage's time goes.

    FFPIPE_TRACE_DIR=DIR [FFPIPE_TRACE_STEPS=40:46] launch/torchrun.sh 4 ...

Each stage process writes DIR/stage-<stage>-pid<pid>.json (a Chrome trace: chrome://tracing or
Perfetto) and DIR/stage-<stage>-pid<pid>.overlap.json: over the traced window, the GPU time of
NCCL kernels (the transfers), of the other kernels (the compute) and of the two at once, which
says whether a stage receives batch k+1 while it computes batch k.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch


class StageTrace:
    def __init__(self, folder: Path, first: int, last: int, stage_id: int):
        self.folder, self.first, self.last, self.stage_id = folder, first, last, stage_id
        self.profiler = None

    @classmethod
    def from_env(cls, stage_id: int) -> "StageTrace | None":
        folder = os.environ.get("FFPIPE_TRACE_DIR")
        if not folder:
            return None
        first, last = (int(v) for v in os.environ.get("FFPIPE_TRACE_STEPS", "40:46").split(":"))
        return cls(Path(folder), first, last, stage_id)

    def at_step(self, step: int) -> None:
        """Call before training step `step`: starts or ends the traced window."""
        if step == self.first and self.profiler is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
        elif step == self.last and self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            self.folder.mkdir(parents=True, exist_ok=True)
            stem = self.folder / f"stage-{self.stage_id}-pid{os.getpid()}"
            self.profiler.export_chrome_trace(f"{stem}.json")
            overlap = kernel_overlap(json.loads(Path(f"{stem}.json").read_text()))
            Path(f"{stem}.overlap.json").write_text(json.dumps(overlap, indent=1) + "\n")
            self.profiler = None


def kernel_overlap(trace: dict) -> dict:
    """GPU milliseconds of NCCL kernels, of other kernels, and of both at the same time."""
    kernels = [e for e in trace.get("traceEvents", []) if e.get("cat") == "kernel" and "dur" in e]
    nccl = [(e["ts"], e["ts"] + e["dur"]) for e in kernels if "nccl" in e["name"].lower()]
    compute = _union([(e["ts"], e["ts"] + e["dur"]) for e in kernels if "nccl" not in e["name"].lower()])
    both = sum(max(0.0, min(b, d) - max(a, c)) for a, b in _union(nccl) for c, d in compute)
    span = [t for e in kernels for t in (e["ts"], e["ts"] + e["dur"])]
    return {"window_ms": (max(span) - min(span)) / 1e3 if span else 0.0,
            "nccl_ms": sum(b - a for a, b in _union(nccl)) / 1e3,
            "compute_ms": sum(b - a for a, b in compute) / 1e3, "overlap_ms": both / 1e3}


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]
