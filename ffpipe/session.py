"""A run's life in its folder: starting or resuming it, opening each stage at the right step,
and the last stage's sink that records every evaluation as it happens."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ffpipe.checkpoint import common_step, load_stage
from ffpipe.config import Config
from ffpipe.errors import ConfigError, FFPipeError
from ffpipe.pipeline.runtime import LoopConfig, StageLogger, run_stage_loop
from ffpipe.pipeline.sink import EvalSink
from ffpipe.pipeline.stage import Stage
from ffpipe.run import append_history, create_run_dir, read_history, read_stage_metrics
from ffpipe.trainer import RunSetup, build_stage, make_source, prepare

# What may change when a run is resumed: nothing that changes the arithmetic or the stage split.
RESUMABLE_KEYS = {"run.stop_after_step", "run.progress", "run.plots", "run.checkpoint_every",
                  "pipeline.timeout_s", "pipeline.queue_depth", "pipeline.backend", "pipeline.transport",
                  "pipeline.ray_tensor_transport", "pipeline.address", "pipeline.placement",
                  "pipeline.cpus_per_stage", "train.log_every"}


@dataclass
class RunStart:
    """Where a run begins, as every stage process needs to know it (small, picklable)."""
    run_dir: Path
    start_step: int
    starts: list[int]


def check_resume_overrides(overrides: list[str]) -> None:
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if key not in RESUMABLE_KEYS:
            raise ConfigError(f"'{key}' cannot change when a run is resumed (it would change what the "
                              f"checkpoints mean); keys that can: {', '.join(sorted(RESUMABLE_KEYS))}")


def begin_run(cfg: Config, resume_dir: Path | None, profile_device: torch.device | None) -> tuple[RunSetup, RunStart]:
    """Coordinator side: load the data, choose (or read back) the stage split, make the folder."""
    if resume_dir is None:
        setup = prepare(cfg, profile_device=profile_device)  # before the folder: bad data leaves nothing
        run_dir = create_run_dir(cfg)
        (run_dir / "partition.json").write_text(json.dumps({"starts": setup.starts}) + "\n")
        return setup, RunStart(run_dir, 0, setup.starts)
    run_dir = Path(resume_dir)
    starts = json.loads((run_dir / "partition.json").read_text())["starts"]
    setup = prepare(cfg, starts=starts)
    step = common_step(run_dir, setup.num_stages) or 0
    if step >= setup.plan.total_steps:
        raise FFPipeError(f"run {run_dir} already trained all {setup.plan.total_steps} steps; nothing to resume")
    return setup, RunStart(run_dir, step, starts)


def open_stage(setup: RunSetup, start: RunStart, stage_id: int, device: torch.device) -> tuple[Stage, StageLogger]:
    """Stage `stage_id` on `device`, at the run's start step (its checkpoint when resuming)."""
    stage = build_stage(setup, stage_id, device)
    logger = StageLogger(stage)
    if start.start_step:
        state = load_stage(start.run_dir, stage_id, start.start_step, map_location=device)
        if state["unit_ids"] != stage.unit_ids:
            raise FFPipeError(f"checkpoint of stage {stage_id} holds units {state['unit_ids']}, "
                              f"the stage now has {stage.unit_ids}: the stage split changed")
        stage.load_state_dict(state)
        logger.rows = read_stage_metrics(start.run_dir, stage_id, start.start_step)
    return stage, logger


def open_sink(start: RunStart, num_units: int, on_result=None) -> EvalSink:
    def record(result: dict) -> None:
        append_history(start.run_dir, result)
        if on_result is not None:
            on_result(result)

    sink = EvalSink(num_units, record)
    sink.history = read_history(start.run_dir, start.start_step)
    return sink


def loop_config(cfg: Config, start: RunStart, num_stages: int, on_log=None) -> LoopConfig:
    every = cfg.run.checkpoint_every
    # Stage 0 can be ahead of the last stage by about stages * (queue_depth + 1) batches: keep
    # enough checkpoints that the slowest stage's newest one is still there in every stage.
    ahead = num_stages * (cfg.pipeline.queue_depth + 1)
    keep = 2 + (-(-ahead // every) if every else 1)
    return LoopConfig(cfg.train.log_every, every, start.run_dir, keep, on_log)


def run_one_stage(setup: RunSetup, start: RunStart, stage_id: int, device: torch.device, link,
                  on_log=None, on_result=None) -> tuple[StageLogger, EvalSink | None]:
    """What a stage process does, for any backend that gives each stage its own process:
    stage 0 reads the data, the last stage evaluates into a sink, `link(peer)` is the channel to
    a neighbour; the loop runs to the end of the stream and both channels are closed."""
    last = setup.num_stages - 1
    stage, logger = open_stage(setup, start, stage_id, device)
    inbox = make_source(setup, device, start.start_step) if stage_id == 0 else link(stage_id - 1)
    sink = open_sink(start, setup.plan.num_units, on_result) if stage_id == last else None
    outbox = sink if stage_id == last else link(stage_id + 1)
    run_stage_loop(stage, inbox, outbox, loop_config(setup.cfg, start, setup.num_stages, on_log), logger)
    for box in (outbox, inbox):
        box.close()
    return logger, sink
