"""`ffpipe bench step`: one device, one process: the training step of BP and of SFF (block and
layer units) for a model and several batch sizes, eager, as a CUDA graph and (optionally) through
torch.compile. Prints images/s, the ratio to BP's eager step measured in the same process, and
peak memory. Every step is the real one (`Stage.train_step`: forward, local losses, backward,
optimizer step) on CIFAR-shaped random data already on the device.
"""
from __future__ import annotations

import datetime
import gc
import json
import time
from pathlib import Path

import torch
from torch import nn

from ffpipe import config as config_mod
from ffpipe.bench import VARIANTS
from ffpipe.bench.devices import asked_device
from ffpipe.errors import ConfigError
from ffpipe.learners import build_learners
from ffpipe.telemetry.measure import peak_memory_mib
from ffpipe.pipeline.graphed import WARMUP_STEPS
from ffpipe.pipeline.messages import Message, Phase
from ffpipe.pipeline.stage import Stage, StageOptions
from ffpipe.pipeline.sync import synchronize


def _reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def build_stage(args, variant: str, batch: int, mode: str, device: torch.device) -> Stage:
    overrides = [f"model.name={args.model}", f"train.optimizer={args.optimizer}",
                 f"train.precision={args.precision}", f"train.batch_size={batch}",
                 f"train.cuda_graphs={'on' if mode == 'graphed' else 'off'}", *VARIANTS[variant],
                 *args.overrides]
    cfg = config_mod.load(None, overrides)
    torch.backends.cudnn.benchmark = True
    learners = build_learners(cfg, tuple(args.shape), args.classes)
    stage = Stage(0, learners, StageOptions.of(cfg), total_steps=10 * (args.warmup + args.steps), device=device)
    if mode == "compiled":
        stage.learners = nn.ModuleList(torch.compile(learner) for learner in stage.learners)
    return stage


def measure(args, variant: str, batch: int, mode: str, device: torch.device) -> dict:
    """Images/s over `args.steps` steps after `args.warmup`, and the peak memory of it all."""
    _reset_memory(device)
    gen = torch.Generator(device=device).manual_seed(0)
    batches = [(torch.randn(batch, *args.shape, device=device, generator=gen),
                torch.randint(0, args.classes, (batch,), device=device, generator=gen)) for _ in range(2)]
    stage = build_stage(args, variant, batch, mode, device)
    compile_start = time.perf_counter()
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            synchronize(device)
            warm_s, start = time.perf_counter() - compile_start, time.perf_counter()
        x, y = batches[i % 2]
        stage.train_step(Message(Phase.TRAIN, 0, i, x=x, y=y))
    synchronize(device)
    seconds = time.perf_counter() - start
    stage.read_stats()  # raises if a loss went non-finite: a broken step is not a fast one
    if args.profile:
        _profile(stage, batches, f"{variant}, batch {batch}, {mode}", args.profile)
    row = {"variant": variant, "batch": batch, "mode": mode, "units": len(stage.unit_ids),
           "images_per_s": batch * args.steps / seconds, "step_ms": 1000 * seconds / args.steps,
           "warmup_s": warm_s, "peak_memory_mib": peak_memory_mib(device)}
    del stage, batches
    return row


def _profile(stage: Stage, batches, title: str, path: str, steps: int = 3) -> None:
    """Where a step's device time goes: the kernels of a few steps, most expensive first."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if stage.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            x, y = batches[i % 2]
            stage.train_step(Message(Phase.TRAIN, 0, i, x=x, y=y))
        synchronize(stage.device)
    key = "self_device_time_total" if stage.device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25)
    with open(path, "a") as f:
        f.write(f"## {title} ({steps} steps)\n{table}\n\n")


def bench_step(args) -> dict:
    device = asked_device(args.device)
    if args.warmup <= WARMUP_STEPS:
        raise ConfigError(f"--warmup {args.warmup}: a graphed step needs {WARMUP_STEPS} eager steps "
                          "and one capture before it is timed; use --warmup 4 or more")
    modes = [m for m in args.modes if device.type == "cuda" or m == "eager"]
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": card, "torch": torch.__version__, "model": args.model, "shape": args.shape,
              "classes": args.classes, "precision": args.precision, "optimizer": args.optimizer,
              "steps": args.steps, "warmup": args.warmup,
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "rows": []}
    print(format_header(result), flush=True)
    rows = result["rows"]
    for batch in args.batch_sizes:
        for variant in args.variants:
            for mode in modes:
                try:
                    rows.append(measure(args, variant, batch, mode, device))
                except Exception as err:  # noqa: BLE001 - one failed variant must not hide the rest
                    rows.append({"variant": variant, "batch": batch, "mode": mode,
                                 "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"})
                print(_format_row(_with_ratios(rows)[-1]), flush=True)
    return result


def _with_ratios(rows: list[dict]) -> list[dict]:
    """Each row's speed and memory against BP's eager step at the same batch size."""
    base = {r["batch"]: r for r in rows if r["variant"] == "bp" and r["mode"] == "eager" and "error" not in r}
    for r in rows:
        bp = base.get(r["batch"])
        if bp and "error" not in r:
            r["speed_vs_bp_eager"] = r["images_per_s"] / bp["images_per_s"]
            r["memory_vs_bp_eager"] = r["peak_memory_mib"] / bp["peak_memory_mib"]
    return rows


HEADER = "| variant | batch | mode | units | img/s | x BP eager | step ms | peak MiB | memory x BP eager |\n" \
         "|---|---|---|---|---|---|---|---|---|"


def _format_row(r: dict) -> str:
    if "error" in r:
        return f"| {r['variant']} | {r['batch']} | {r['mode']} | failed: {r['error']} | | | | | |"
    ratio = lambda key: f"{r[key]:.2f}" if key in r else "-"  # noqa: E731
    return (f"| {r['variant']} | {r['batch']} | {r['mode']} | {r['units']} | {r['images_per_s']:,.0f} | "
            f"{ratio('speed_vs_bp_eager')} | {r['step_ms']:.2f} | {r['peak_memory_mib']:,.0f} | "
            f"{ratio('memory_vs_bp_eager')} |")


def format_header(result: dict) -> str:
    """The table's title line and column heads; rows follow as they are measured."""
    lines = [f"{result['device']}, torch {result['torch']}, {result['date']}; {result['model']} "
             f"{'x'.join(map(str, result['shape']))}, {result['classes']} classes, "
             f"{result['precision']}, {result['optimizer']}, {result['steps']} timed steps after "
             f"{result['warmup']}", "", HEADER]
    return "\n".join(lines)


def run_bench_step(args) -> int:
    result = bench_step(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
