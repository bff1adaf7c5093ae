"""`ffpipe bench memory`: the largest batch that fits one device, found with real training steps.

For a model, input size and precision: BP (the whole network, one backward), the sequential SFF
trainer (every unit on one device, a backward per unit) and each of S SFF stages on its own (its
units only, fed tensors of the shape its neighbour sends). A batch fits when a few real steps
(graphed where the stage would be) run without running out of device memory; the batch doubles
until one does not, then a bisection narrows the gap to `--resolution`; images/s and peak memory
are those of the trial at the largest batch. With `--models`, which of several networks BP and the stages can train at
`--batch` at all. On a CPU nothing runs out, so the search stops at `--max-batch` (a test of the
command, not a figure).
"""
from __future__ import annotations

import copy
import datetime
import gc
import json
import sys
from pathlib import Path

import torch

from ffpipe import config as config_mod
from ffpipe.errors import FFPipeError
from ffpipe.learners import build_learners
from ffpipe.telemetry.measure import peak_memory_mib
from ffpipe.models import dry_run
from ffpipe.pipeline.messages import Message, Phase
from ffpipe.pipeline.partition import stage_ranges, stage_starts
from ffpipe.pipeline.profile import time_steps
from ffpipe.pipeline.stage import Stage, StageOptions, autocast_dtype, input_dtype


def largest_batch(fits, start: int, max_batch: int, resolution: float) -> int:
    """The largest batch <= max_batch with fits(batch) true (0 if not even `start` fits):
    doubling from `start`, then bisection until the gap is below `resolution` of the batch."""
    if not fits(start):
        return 0
    good = start
    while good < max_batch:
        trial = min(good * 2, max_batch)
        if not fits(trial):
            bad = trial
            break
        good = trial
    else:
        return good
    while bad - good > max(1, int(good * resolution)):
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


class Candidate:
    """One thing to size: a Stage over some learners, and the shapes of what it receives."""

    def __init__(self, name: str, cfg, learners: list, in_shape: tuple, skips: tuple, classes: int, device):
        self.name, self.cfg, self.learners = name, cfg, learners
        self.in_shape, self.skips, self.classes, self.device = in_shape, skips, classes, device

    def run(self, batch: int, steps: int) -> tuple[float, float]:
        """Images/s over `steps` timed steps at `batch`, and the peak memory (MiB) of the trial
        (raises torch.OutOfMemoryError). The caller releases the memory: see attempt()."""
        cfg = config_mod.load(None, [*self.cfg, f"train.batch_size={batch}"])
        # copies: a Stage moves its learners to the device, and each trial starts afresh
        stage = Stage(0, [copy.deepcopy(learner) for learner in self.learners], StageOptions.of(cfg),
                      total_steps=1000, device=self.device)
        amp = autocast_dtype(cfg.train.precision, self.device) or torch.float32
        # the images as the loader gives them (in stage 0's input dtype), else what a previous
        # stage sends (the autocast dtype)
        images = input_dtype(cfg.train.precision, self.learners[0], self.device) or torch.float32
        x = torch.randn(batch, *self.in_shape, device=self.device, dtype=images if self.skips is None else amp)
        skips = tuple(torch.randn(batch, *s, device=self.device, dtype=amp) for s in self.skips or ())
        y = torch.randint(0, self.classes, (batch,), device=self.device)
        msg = Message(Phase.TRAIN, 0, 0, x=x, skips=skips, y=y)
        return batch / time_steps(stage, msg, steps), peak_memory_mib(self.device)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def candidates(args, model: str, device: torch.device) -> list[Candidate]:
    """BP, the sequential SFF trainer and each of `args.stages` SFF stages for `model`."""
    shape, common = tuple(args.shape), [f"model.name={model}", f"train.precision={args.precision}",
                                        f"train.optimizer={args.optimizer}", *args.overrides]
    bp_cfg = [*common, "algo.name=bp"]
    sff_cfg = [*common, "algo.name=sff", f"model.granularity={args.granularity}"]
    out = [Candidate("bp", bp_cfg, build_learners(config_mod.load(None, bp_cfg), shape, args.classes),
                     shape, None, args.classes, device)]
    learners = build_learners(config_mod.load(None, sff_cfg), shape, args.classes)
    out.append(Candidate("sff sequential", sff_cfg, learners, shape, None, args.classes, device))
    shapes = dry_run([learner.body for learner in learners], shape)
    starts = stage_starts(len(learners), args.stages)  # equal unit counts: costs are not measured here
    for k, units in enumerate(stage_ranges(starts, len(learners))):
        before = shapes[units.start - 1] if units.start else None
        out.append(Candidate(f"sff stage {k} of {args.stages} (units {units.start}-{units.stop - 1})",
                             sff_cfg, learners[units.start:units.stop], before.out if before else shape,
                             before.skips if before else None, args.classes, device))
    return out


def attempt(candidate: Candidate, batch: int, steps: int) -> tuple[float, float] | None:
    """(images/s, peak MiB) of real steps at `batch`, or None when it ran out of memory. The
    memory is released by the caller, after this returns: while the error is being handled, its
    traceback still holds the failed step's tensors (and a CUDA graph's pool)."""
    try:
        return candidate.run(batch, steps)
    except torch.OutOfMemoryError:
        return None


def size(candidate: Candidate, args) -> dict:
    measured = {}

    def fits(batch: int) -> bool:
        result = attempt(candidate, batch, args.steps)
        _release(candidate.device)
        if result is not None:
            measured[batch] = result
        # a search at 224 px takes minutes: show where it is
        print(f"  {candidate.name}: batch {batch:,} {'fits' if result else 'out of memory'}", file=sys.stderr, flush=True)
        return result is not None

    batch = largest_batch(fits, args.start_batch, args.max_batch, args.resolution)
    # The figures of the trial at the largest batch: a second run there can fail where the
    # first fitted (the allocator's state differs), and costs another warm-up.
    rate, peak = measured.get(batch, (0.0, 0.0))
    return {"run": candidate.name, "largest_batch": batch, "images_per_s": rate, "peak_memory_mib": peak}


def run_key(index: int) -> str:
    """`--runs` names of candidates(): bp, sequential, stage0, stage1, ..."""
    return ("bp", "sequential")[index] if index < 2 else f"stage{index - 2}"


def bench_memory(args) -> dict:
    args.runs = args.runs or [run_key(i) for i in range(2 + args.stages)]
    unknown = sorted(set(args.runs) - {run_key(i) for i in range(2 + args.stages)})
    if unknown:
        raise FFPipeError(f"--runs {' '.join(unknown)}: not a run of this bench; choose from bp, sequential, "
                          f"stage0 .. stage{args.stages - 1}")
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": card, "torch": torch.__version__, "model": args.model, "shape": args.shape,
              "classes": args.classes, "precision": args.precision, "stages": args.stages,
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "rows": [], "models": []}
    print(f"{card}, torch {torch.__version__}, {result['date']}; {args.model} {'x'.join(map(str, args.shape))}, "
          f"{args.classes} classes, {args.precision}\n\n| run | largest batch | x BP | img/s at it | x BP img/s | peak GiB |"
          "\n|---|---|---|---|---|---|",
          flush=True)
    chosen = [c for i, c in enumerate(candidates(args, args.model, device)) if run_key(i) in args.runs]
    for candidate in chosen:
        row = size(candidate, args)
        result["rows"].append(row)
        bp = result["rows"][0] if result["rows"][0]["run"] == "bp" else None
        ratio = lambda key, digits: f"{row[key] / (bp[key] or 1):.{digits}f}" if bp else "—"  # noqa: E731
        print(f"| {row['run']} | {row['largest_batch']:,} | {ratio('largest_batch', 1)} | "
              f"{row['images_per_s']:,.0f} | {ratio('images_per_s', 2)} | {row['peak_memory_mib'] / 1024:.1f} |",
              flush=True)
    for model in args.models:
        result["models"].append(trainable_at(args, model, device))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def trainable_at(args, model: str, device: torch.device) -> dict:
    """Can BP, and can every one of the S stages, train `model` at batch `args.batch`?"""
    verdict = {"model": model, "batch": args.batch}
    for candidate in candidates(args, model, device):
        verdict[candidate.name] = attempt(candidate, args.batch, steps=1) is not None
        _release(device)
    stages_ok = all(v for k, v in verdict.items() if k.startswith("sff stage"))
    print(f"{model} at batch {args.batch}: BP {'fits' if verdict['bp'] else 'does not fit'}, "
          f"{args.stages} SFF stages {'fit' if stages_ok else 'do not fit'}", flush=True)
    return verdict
