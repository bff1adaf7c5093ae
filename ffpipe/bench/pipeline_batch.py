"""`ffpipe bench pipeline --max-batch CAP`: each row's largest global batch.

Every row of the plan is tried again at other global batches, each trial a short run of its own
(ffpipe: `train.max_steps=3`; peers: 1 warm-up and 2 timed steps) with the row's other settings;
the batch doubles from the config's train.batch_size until a trial runs out of device memory,
then a bisection narrows the gap to --resolution (the memory bench's search,
ffpipe/bench/memory.py). Batches are multiples of the row's processes x its largest microbatch
count (the peers' schedules try only that count here: the fewest activations per microbatch),
so that every rank's share and every microbatch is whole. A trial that fails for another reason
than memory stops the row's search ("failed"). On a CPU nothing runs out: the search ends at CAP
(a test of the command, not a figure). Synthetic data grows to 3 batches per trial; a real data
set must hold that many images.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Callable

from ffpipe import config as config_mod
from ffpipe.bench.memory import largest_batch

TRIAL_STEPS = 3
OUT_OF_MEMORY = ("out of memory", "OutOfMemoryError")  # what torch's error says, in the trial's log
HEADER = ("| run | largest global batch | x BP | img/s at it | peak GiB per GPU at it |\n"
          "|---|---|---|---|---|")


class TrialFailed(Exception):
    """A trial failed for another reason than memory."""


def batch_quantum(run) -> int:
    """Global batches tried are multiples of this: whole shares for every rank and microbatch."""
    return max(1, run.nproc) * max(run.microbatches)


def trial(args, run, batch: int, synthetic: bool):
    """The (args, run) of a short trial of `run` at global batch `batch`."""
    sets = [f"train.batch_size={batch}"]
    if synthetic:  # a trial's batches must exist: the synthetic set grows with the batch
        sets.append(f"data.synthetic_train={batch * TRIAL_STEPS}")
    trial_args = copy.copy(args)
    trial_args.overrides = [*args.overrides, *sets]
    trial_args.peer_warmup, trial_args.peer_steps = 1, TRIAL_STEPS - 1
    trial_run = copy.copy(run)
    trial_run.microbatches = (max(run.microbatches),)
    trial_run.overrides = [*run.overrides, "train.epochs=1", f"train.max_steps={TRIAL_STEPS}"]
    return trial_args, trial_run


def search(args, run, measure: Callable, folder: Path) -> dict:
    """{'batch', 'images_per_s', 'memory'} of the largest batch that fits, or {'failure': ...}."""
    quantum = batch_quantum(run)
    synthetic = config_mod.load(args.config, args.overrides).data.name == "synthetic"
    measured = {}

    def fits(multiple: int) -> bool:
        batch = multiple * quantum
        out = folder / f"batch{batch}"
        out.mkdir(parents=True, exist_ok=True)
        result = measure(*trial(args, run, batch, synthetic), out)
        print(f"  {run.name}: batch {batch:,} {'fits' if result.images_per_s is not None else 'failed'}",
              file=sys.stderr, flush=True)
        if result.images_per_s is not None:
            measured[batch] = result
            return True
        logs = " ".join(log.read_text(errors="replace") for log in out.glob("*.log"))
        if any(marker in logs for marker in OUT_OF_MEMORY):
            return False
        raise TrialFailed(f"batch {batch}: {result.failure}")

    start = max(1, args.start_batch // quantum)
    try:
        batch = largest_batch(fits, start, max(start, args.max_batch // quantum), args.resolution) * quantum
    except TrialFailed as e:
        return {"failure": f"failed ({e})"}
    if batch not in measured:
        return {"failure": f"not even batch {start * quantum} fits"}
    r = measured[batch]
    # ffpipe's steady-state figure needs more steps than a trial's: then its all-steps one
    speed = f"{r.images_per_s:,.0f}" if r.images_per_s else r.cells[0]
    return {"batch": batch, "images_per_s": speed, "memory": r.cells[5]}


def write_batch_table(args, plan: list, measure: Callable, out: Path, table: Path) -> None:
    """The second table of bench.md: every row's largest global batch."""
    lines = ["", f"Largest global batch (up to {args.max_batch:,}):", "", HEADER]
    with table.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    bp = None
    for i, run in enumerate(plan):
        found = search(args, run, lambda a, r, o: measure(a, r, i, o), out / f"max-batch-row{i}")
        if run.reference == "bp":
            bp = found.get("batch")
        if "failure" in found:
            row = f"| {run.name} | {found['failure']} | - | - | - |"
        else:
            x_bp = f"{found['batch'] / bp:.2f}" if bp else "-"
            row = f"| {run.name} | {found['batch']:,} | {x_bp} | {found['images_per_s']} | {found['memory']} |"
        with table.open("a") as f:
            f.write(row + "\n")
        print(row, flush=True)
