"""`ffpipe eval`: test accuracy of a run's newest checkpoints, every stage joined into one stage
on one device and run through the same stage loop as training, with an evaluation-only stream."""
from __future__ import annotations

from pathlib import Path

from ffpipe.errors import FFPipeError
from ffpipe.pipeline.runtime import LoopConfig, run_stage_loop
from ffpipe.pipeline.sink import EvalSink
from ffpipe.pipeline.stage import Stage, StageOptions
from ffpipe.run.checkpoints import read_units, resume_step
from ffpipe.run.folder import RunFolder
from ffpipe.run.setup import prepare, setup_process, stage_device
from ffpipe.run.stage_process import make_source


def evaluate(run_dir: str | Path) -> dict:
    folder = RunFolder.open(run_dir)
    cfg = folder.config()
    setup_process(cfg)
    setup = prepare(cfg, starts=folder.partition())
    step = resume_step(folder, len(setup.learners))  # stages may have saved a few steps apart
    if step is None:
        raise FFPipeError(f"{folder} has no complete checkpoint whose files are whole; nothing to evaluate")
    device = stage_device(cfg, 0)
    units = read_units(folder, step, range(len(setup.learners)))
    for learner in setup.learners:
        learner.load_state_dict(units[learner.index]["learner"])
    stage = Stage(0, setup.learners, StageOptions.of(cfg, training=False), setup.plan.total_steps, device)
    sink = EvalSink(setup.plan.num_units, vote=cfg.algo.vote)
    run_stage_loop(stage, make_source(setup, device, eval_only=True), sink, LoopConfig(log_every=1))
    result = {**sink.history[-1], "step": step}
    folder.write_eval(result)
    return result
