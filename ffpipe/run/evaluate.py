"""`ffpipe eval`: test accuracy of a run's newest checkpoints, every stage joined into one stage
on one device and run through the same stage loop as training, with an evaluation-only stream.
`trained_learners` is the one place a run's learners are rebuilt from its checkpoints (load_run
in ffpipe/inference uses it too)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ffpipe.config import Config
from ffpipe.errors import FFPipeError
from ffpipe.learners import build_learners
from ffpipe.pipeline.runtime import LoopConfig, run_stage_loop
from ffpipe.pipeline.sink import EvalSink
from ffpipe.pipeline.stage import Stage, StageOptions
from ffpipe.run.checkpoints import read_units, resume_step
from ffpipe.run.folder import RunFolder
from ffpipe.run.setup import prepare, setup_process, stage_device
from ffpipe.run.stage_process import make_source
from ffpipe.run.start import write_data_info


def evaluate(run_dir: str | Path) -> dict:
    folder = RunFolder.open(run_dir)
    cfg = folder.config()
    setup_process(cfg)
    setup = prepare(cfg, starts=folder.partition())
    saved = folder.data_info()
    if saved is None:  # a run folder from before data.json: it gets one, from the data just read
        write_data_info(folder, setup)
    else:  # the normalisation the run trained with, whatever the data folder holds now
        setup.data.mean, setup.data.std = saved["mean"], saved["std"]
    learners, step = trained_learners(folder, cfg, setup.learners)
    device = stage_device(cfg, 0)
    stage = Stage(0, learners, StageOptions.of(cfg, training=False), setup.plan.total_steps, device)
    sink = EvalSink(setup.plan.num_units, vote=cfg.algo.vote)
    run_stage_loop(stage, make_source(setup, device, eval_only=True), sink, LoopConfig(log_every=1))
    result = {**sink.history[-1], "step": step}
    folder.write_eval(result)
    return result


def trained_learners(folder: RunFolder, cfg: Config, learners: list[nn.Module] | None = None,
                     in_shape: tuple[int, ...] = (), num_classes: int = 0) -> tuple[list[nn.Module], int]:
    """The run's learners (those given, else built for `in_shape` and `num_classes`) holding its
    newest complete step whose files are whole, and that step."""
    if learners is None:
        learners = build_learners(cfg, tuple(in_shape), num_classes)
    step = resume_step(folder, len(learners))  # stages may have saved a few steps apart
    if step is None:
        raise FFPipeError(f"{folder} has no complete checkpoint whose files are whole; nothing to evaluate")
    units = read_units(folder, step, range(len(learners)))
    for learner in learners:
        learner.load_state_dict(units[learner.index]["learner"])
    return learners, step
