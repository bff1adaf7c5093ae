"""`ffpipe train` and `ffpipe eval`: set a run up, hand it to its backend, write what it learned."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ffpipe.checkpoint import load_stage
from ffpipe.config import Config
from ffpipe.errors import ConfigError
from ffpipe.pipeline.runtime import LoopConfig, run_stage_loop
from ffpipe.pipeline.sink import EvalSink
from ffpipe.pipeline.stage import Stage
from ffpipe.progress import Progress
from ffpipe.run import create_run_dir, load_run_config
from ffpipe.trainer import finish_run, make_source, prepare, setup_process, stage_device


def train(cfg: Config) -> tuple[Path, dict]:
    """Train with the configured backend; returns the run folder and its summary."""
    setup_process(cfg)
    setup = prepare(cfg)  # before the run folder exists: bad data leaves nothing behind
    run_dir = create_run_dir(cfg)
    print(f"ffpipe: run folder {run_dir}", file=sys.stderr)
    progress = Progress(setup.plan.total_steps, setup.num_stages, cfg.run.progress)
    loop = LoopConfig(cfg.train.log_every, cfg.run.checkpoint_every, run_dir, progress.update)
    sink = EvalSink(setup.plan.num_units, progress.result)
    t0 = time.perf_counter()
    if cfg.pipeline.backend != "local":
        raise ConfigError(f"pipeline.backend = '{cfg.pipeline.backend}' is not available in this "
                          "version; use 'local'")
    from ffpipe.backends.local import run_local
    reports = run_local(setup, loop, sink)
    summary = finish_run(setup, run_dir, reports, sink.history, time.perf_counter() - t0)
    return run_dir, summary


def evaluate(run_dir: Path) -> dict:
    """Test accuracy of a run's last checkpoints, all stages joined on one device."""
    cfg = load_run_config(run_dir)
    setup_process(cfg)
    setup = prepare(cfg)
    device = stage_device(cfg, 0)
    for k in range(setup.num_stages):
        state = load_stage(run_dir, k)
        r = setup.unit_range(k)
        torch.nn.ModuleList(setup.learners[r.start:r.stop]).load_state_dict(state["learners"])
    stage = Stage(0, setup.learners, cfg, setup.plan.total_steps, device)
    sink = EvalSink(setup.plan.num_units)
    run_stage_loop(stage, make_source(setup, device, eval_only=True), sink, LoopConfig(log_every=1))
    result = sink.history[-1]
    (Path(run_dir) / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
