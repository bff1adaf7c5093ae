"""One stage process: what a torchrun rank, a Ray actor or a local stage thread does.

Open the stage (its learners on its device, at the run's start step), its inbox (the data source
for stage 0, else a channel from the previous stage) and its outbox (the evaluation sink for the
last stage, else a channel to the next), run the stage loop to the end of the stream, close both.
"""
from __future__ import annotations

import sys
import traceback

import torch

from ffpipe.data import StreamSplit, check_model_input, eval_loader, training_loader
from ffpipe.errors import FFPipeError
from ffpipe.models import UnitShape, dry_run
from ffpipe.pipeline.replicas.fan import inbox_from, outbox_to, outbox_to_sink, source_rows
from ffpipe.pipeline.replicas.topology import Place, shard_rows
from ffpipe.pipeline.runtime import LoopConfig, StageLogger, run_stage_loop
from ffpipe.pipeline.sink import EvalSink
from ffpipe.pipeline.source import DataSource
from ffpipe.pipeline.stage import Stage, StageOptions, input_dtype
from ffpipe.run.checkpoints import read_units, save_units
from ffpipe.run.folder import RunFolder
from ffpipe.run.live import StageLive
from ffpipe.run.recovery import StageFailed
from ffpipe.run.setup import RunSetup
from ffpipe.run.start import RunStart


def stage_input_shape(setup: RunSetup, stage_id: int) -> UnitShape | None:
    """Per-sample shapes of what stage `stage_id` receives from the stage before it."""
    first = setup.unit_range(stage_id).start
    if first == 0:
        return None
    bodies = [learner.body for learner in setup.learners[:first]]
    return dry_run(bodies, setup.info.in_shape)[-1]


def build_stage(setup: RunSetup, stage_id: int, device: torch.device, replica_group=None) -> Stage:
    r = setup.unit_range(stage_id)
    return Stage(stage_id, setup.learners[r.start:r.stop], StageOptions.of(setup.cfg),
                 setup.plan.total_steps, device, expect=stage_input_shape(setup, stage_id),
                 replica_group=replica_group)


def open_stage(setup: RunSetup, start: RunStart, stage_id: int, device: torch.device,
               replica_group=None) -> tuple[Stage, StageLogger]:
    """Stage `stage_id` on `device`, at the run's start step (its checkpoint when resuming);
    `replica_group`: the process group of its replicas, if it has several."""
    stage = build_stage(setup, stage_id, device, replica_group)
    logger = StageLogger(stage)
    if start.start_step:  # its units as saved, by whichever stages held them then
        units = read_units(start.folder, start.start_step, stage.unit_ids, device, trainable_names(setup))
        stage.load_state_dict({"step": start.start_step, "units": units})
        logger.rows = start.folder.read_stage_metrics(stage_id, start.start_step)
    return stage, logger


def trainable_names(setup: RunSetup):
    """unit -> the names of its parameters a stage's optimizer holds (its body's too unless frozen)."""
    frozen = setup.cfg.train.freeze_bodies
    return lambda unit: [name for name, _ in setup.learners[unit].named_parameters()
                         if not (frozen and name.startswith("body."))]


def make_source(setup: RunSetup, device: torch.device, start_step: int = 0,
                eval_only: bool = False, place: Place | None = None) -> DataSource:
    """Stage 0's data source; `place`: one of several stage-0 replicas, whose rows of every
    batch a streamed split decodes alone (in-memory data is cut by ShardedSource instead)."""
    if setup.data is None:
        raise RuntimeError("make_source needs the data: call it where stage 0 runs")
    cfg, data = setup.cfg, setup.data
    for split, images in (("training", data.train), ("test", data.test)):
        check_model_input(images, setup.info.in_shape, split)
    keep = None
    if place is not None and place.replicas > 1 and isinstance(data.train, StreamSplit):
        keep = lambda n: slice(*shard_rows(n, place.replicas, place.replica))  # noqa: E731
    dtype = input_dtype(cfg.train.precision, setup.learners[0], device) or torch.float32
    train = training_loader(data, cfg.data, cfg.train.batch_size, cfg.train.seed, device,
                            cfg.train.drop_last, dtype, keep)
    test, val = (None if split is None else
                 eval_loader(split, data, cfg.data, cfg.train.eval_batch_size, device, dtype, keep)
                 for split in (data.test, data.val))
    return DataSource(setup.plan, train, test, setup.transform, start_step, eval_only,
                      cfg.run.stop_after_step, cfg.train.eval_every, val, unit_votes(cfg),
                      cfg.train.microbatches)


def unit_votes(cfg) -> bool:
    """Whether evaluation keeps each unit's votes apart: the votes that choose among units."""
    return cfg.algo.name != "bp" and cfg.algo.vote in ("best_range", "weighted")


def open_sink(start: RunStart, num_units: int, timeout_s: float, on_result=None, vote: str = "mean") -> EvalSink:
    def record(result: dict) -> None:
        start.folder.append_history(result)
        if on_result is not None:
            on_result(result)

    sink = EvalSink(num_units, record, timeout_s, vote)
    sink.history = start.folder.history(start.start_step)
    return sink


def loop_config(setup: RunSetup, folder: RunFolder | None, on_log=None, on_event=None,
                write_rows=None) -> LoopConfig:
    """How often the loop logs and saves; `folder` None: nothing is saved (evaluation, a replica
    other than 0); `write_rows()` writes the stage's metric rows (StageLive's, which its writer
    thread also calls), else the folder's own."""
    cfg = setup.cfg

    def save(logger: StageLogger, epoch: int) -> None:
        """The stage's units and its metric rows, so that a crash loses neither."""
        stage = logger.stage
        stage.sync("a checkpoint")
        state = stage.state_dict()
        save_units(folder, state["step"], epoch, state["units"], setup.plan.num_units)
        if write_rows is not None:
            write_rows()
        else:
            folder.write_stage_metrics(stage.stage_id, logger.rows)

    return LoopConfig(cfg.train.log_every, cfg.run.checkpoint_every, save if folder is not None else None, on_log,
                      on_event)


def open_inbox(setup: RunSetup, start: RunStart, place: Place, device: torch.device, link):
    """Stage 0: the data (its own rows of every batch, for a replica); else the channel(s) from
    the previous stage."""
    if place.stage == 0:
        return source_rows(make_source(setup, device, start.start_step, place=place), place)
    return inbox_from(start.topology, place, link)


def open_outbox(setup: RunSetup, start: RunStart, place: Place, link, on_result=None):
    """The channel(s) to the next stage; the last stage's (replica 0's) evaluation sink.
    Returns (outbox, sink or None)."""
    if place.stage < setup.num_stages - 1:
        return outbox_to(start.topology, place, link), None
    cfg = setup.cfg
    return outbox_to_sink(start.topology, place, link, lambda: open_sink(
        start, setup.plan.num_units, cfg.pipeline.timeout_s, on_result, cfg.algo.vote))


def run_one_stage(setup: RunSetup, start: RunStart, place: Place, device: torch.device, link,
                  on_log=None, on_result=None, replica_group=None) -> tuple[StageLogger, EvalSink | None]:
    """Stage 0 reads the data, the last stage evaluates into a sink, `link(rank)` is the channel to
    a neighbouring process; the loop runs to the end of the stream and both channels are closed.
    Only replica 0 of a stage saves, logs and evaluates; its other replicas train beside it."""
    stage, live = None, StageLive(setup, start, place, on_log, on_result)
    try:
        stage, live.logger = open_stage(setup, start, place.stage, device, replica_group)
        inbox = open_inbox(setup, start, place, device, link)
        outbox, sink = open_outbox(setup, start, place, link, live.on_result)
        folder, logged = (start.folder, live.on_log) if place.lead else (None, None)
        run_stage_loop(stage, inbox, outbox, loop_config(setup, folder, logged, live.recorder.note, live.write_rows),
                       live.logger)
        stage.release_graph()  # before the process groups are destroyed: see GraphedStep.release
        for box in (outbox, inbox):
            box.close()
    except Exception as err:  # name the stage and its step; the traceback of a bug stays visible
        if not isinstance(err, FFPipeError):
            traceback.print_exc(file=sys.stderr)
        step = stage.step if stage else start.start_step
        raise StageFailed.of(place.stage, step, err, detail=live.why_stalled()) from err
    finally:
        live.close()
    return live.logger, sink
