"""`ffpipe train` and `ffpipe eval`: set a run up (or resume it), hand it to its backend, write
what it learned."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ffpipe.checkpoint import common_step, load_stage
from ffpipe.config import Config
from ffpipe.pipeline.runtime import LoopConfig, run_stage_loop
from ffpipe.pipeline.sink import EvalSink
from ffpipe.pipeline.stage import Stage
from ffpipe.progress import Progress
from ffpipe.run import load_run_config
from ffpipe.session import begin_run
from ffpipe.trainer import finish_run, make_source, prepare, setup_process, stage_device


def train(cfg: Config, resume_dir: Path | None = None) -> tuple[Path, dict]:
    """Train with the configured backend; returns the run folder and its summary (torchrun:
    every rank returns; only rank 0's summary is complete)."""
    if cfg.pipeline.backend == "torchrun":
        from ffpipe.backends.torchrun import train_torchrun
        return train_torchrun(cfg, resume_dir)
    if cfg.pipeline.backend == "ray":
        from ffpipe.backends.ray_backend import train_ray
        return train_ray(cfg, resume_dir)
    setup_process(cfg)
    setup, start = begin_run(cfg, resume_dir, stage_device(cfg, 0))
    print(f"ffpipe: run folder {start.run_dir}" + (f", resuming at step {start.start_step}"
                                                    if start.start_step else ""), file=sys.stderr)
    progress = Progress(setup.plan.total_steps, setup.num_stages, cfg.run.progress)
    t0 = time.perf_counter()
    from ffpipe.backends.local import run_local
    reports, history = run_local(setup, start, progress.update, progress.result)
    summary = finish_run(setup, start.run_dir, reports, history, time.perf_counter() - t0)
    return start.run_dir, summary


def evaluate(run_dir: Path) -> dict:
    """Test accuracy of a run's newest checkpoints, all stages joined on one device."""
    cfg = load_run_config(run_dir)
    setup_process(cfg)
    starts = json.loads((Path(run_dir) / "partition.json").read_text())["starts"]
    setup = prepare(cfg, starts=starts)
    device = stage_device(cfg, 0)
    step = common_step(run_dir, setup.num_stages)  # stages may have saved a few steps apart
    for k in range(setup.num_stages):
        r = setup.unit_range(k)
        state = load_stage(run_dir, k, step)["learners"]
        torch.nn.ModuleList(setup.learners[r.start:r.stop]).load_state_dict(state)
    stage = Stage(0, setup.learners, cfg, setup.plan.total_steps, device)
    sink = EvalSink(setup.plan.num_units)
    run_stage_loop(stage, make_source(setup, device, eval_only=True), sink, LoopConfig(log_every=1))
    result = sink.history[-1]
    (Path(run_dir) / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
