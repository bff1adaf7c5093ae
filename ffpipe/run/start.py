"""Where a run starts: a new folder at step 0, or a run folder's newest complete step, on the
layout asked for.

Checkpoints are keyed by unit, so a resumed or restarted run may take another layout (stages,
boundaries, replicas, backend): it learns bit for bit what the old layout would have learned. A
layout change is written to partition.json's history and recorded in failures.jsonl, and the
stages' metric files are regrouped by the new split. A resume that finds checkpoints but none
usable stops and says so (run.start_over = true trains the run again from step 0 on purpose).
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch

from ffpipe.config import Config
from ffpipe.errors import CheckpointError, FFPipeError
from ffpipe.pipeline.replicas.topology import Topology
from ffpipe.run.checkpoints import discard_after, resume_step, unusable
from ffpipe.run.folder import RunFolder
from ffpipe.run.recovery import Attempt
from ffpipe.run.setup import RunSetup, choose_replicas, prepare


@dataclass
class RunStart:
    """Where a run begins, as every stage process needs to know it (small, picklable)."""
    folder: RunFolder
    start_step: int
    starts: list[int]
    attempt: Attempt = Attempt()  # its number in failures.jsonl; one more for each automatic restart
    replicas: tuple[int, ...] = ()  # per stage ((): one each)

    @property
    def topology(self) -> Topology:
        return Topology.of(self.replicas or [1] * len(self.starts))


def begin_run(cfg: Config, resume: RunFolder | None, profile_device: torch.device | None,
              attempt: Attempt | None = None, processes: int | None = None,
              link: float | None = None) -> tuple[RunSetup, RunStart]:
    """Coordinator side: load the data, choose the stage split and the replicas (over
    `processes` for 'auto'), make the folder (a new run) or find the step to go on from (a
    resumed or restarted one). `attempt` None: the first of a new session on `resume`."""
    attempt = attempt if attempt is not None else Attempt.first_of(resume)
    if resume is None:
        setup = prepare(cfg, profile_device=profile_device, link=link)  # before the folder: bad data leaves nothing
        replicas = choose_replicas(setup, processes)
        folder = RunFolder.create(cfg)
        folder.write_partition(setup.starts, replicas, step=0)
        _write_plan(folder, setup)
        write_data_info(folder, setup)
        return setup, RunStart(folder, 0, setup.starts, attempt, replicas)
    saved = resume.partition()
    new_split = layout_asked(cfg, saved)
    setup = prepare(cfg, starts=None if new_split else saved, profile_device=profile_device, link=link)
    replicas = choose_replicas(setup, processes)  # replicas learn as their stage does: any count
    step = usable_step(resume, setup)
    if step >= setup.plan.total_steps:
        raise FFPipeError(f"run {resume} already trained all {setup.plan.total_steps} steps; nothing to resume")
    _write_plan(resume, setup)  # a folder from before plan.json gets one
    if resume.data_info() is None:  # and one from before data.json its data's description
        write_data_info(resume, setup)
    return setup, pick_up(setup, RunStart(resume, step, setup.starts, attempt, replicas))


def _write_plan(folder: RunFolder, setup: RunSetup) -> None:
    folder.write_plan(setup.plan.total_steps, setup.plan.steps_per_epoch, len(setup.learners))


def write_data_info(folder: RunFolder, setup: RunSetup) -> None:
    """data.json: what the trained model needs of its data to be used without it (load_run)."""
    info = setup.info
    folder.write_data_info(setup.cfg.data.name, info.in_shape, info.classes, info.mean, info.std,
                           info.eval_crop)


def layout_asked(cfg: Config, saved: list[int]) -> bool:
    """Whether the config asks for another split than the run's (stages or boundaries changed)."""
    if cfg.pipeline.boundaries:
        return [0, *cfg.pipeline.boundaries] != saved
    return cfg.pipeline.stages != len(saved)


def usable_step(folder: RunFolder, setup: RunSetup) -> int:
    """The newest complete step whose files are whole; 0 where the run has no complete step yet.
    Where it has complete steps and none is usable, the run stops rather than train over them."""
    step = resume_step(folder, len(setup.learners))
    if step is not None:
        return step
    why = unusable(folder, len(setup.learners))
    if why and not setup.cfg.run.start_over:
        raise CheckpointError(f"{folder} cannot go on: {why}; to train this run again from step 0 in the "
                              "same folder (its checkpoints are then deleted), resume it with --set run.start_over=true")
    return 0


def restart_point(setup: RunSetup, start: RunStart, replicas: tuple[int, ...] | None = None) -> RunStart:
    """The next attempt of a failed run, from its newest complete step, on setup's split and
    `replicas` (None: the attempt's own)."""
    step = usable_step(start.folder, setup)
    again = RunStart(start.folder, step, setup.starts, start.attempt.next(),
                     start.replicas if replicas is None else replicas)
    return pick_up(setup, again)


def pick_up(setup: RunSetup, start: RunStart) -> RunStart:
    """Make the folder ready for an attempt from start.start_step: later checkpoints (never
    complete) and killed writers' temporaries gone, a new layout recorded and the stages' metric
    files regrouped by its split."""
    folder = start.folder
    discard_after(folder, start.start_step)
    before, replicas = folder.layout(), list(start.replicas or [1] * len(start.starts))
    if before["starts"] != start.starts or before["replicas"] != replicas:
        if before["starts"] != start.starts:
            folder.regroup_metrics(start.starts, len(setup.learners))
        change = f"layout {_describe(before)} -> {_describe({'starts': start.starts, 'replicas': start.replicas})}"
        folder.record_layout(start.attempt.number, start.start_step, change)
        folder.write_partition(start.starts, start.replicas, step=start.start_step)
        print(f"ffpipe: {change} from step {start.start_step}", file=sys.stderr, flush=True)
    return start


def _describe(layout: dict) -> str:
    replicas = list(layout.get("replicas") or [])
    text = f"{len(layout['starts'])} stage(s) from units {layout['starts']}"
    return text + (f" x {replicas} replicas" if any(r > 1 for r in replicas) else "")


def announce(start: RunStart, detail: str = "") -> None:
    """The one line every backend prints when a run starts, resumes or restarts."""
    where = f"ffpipe: run folder {start.folder}" + (f", {detail}" if detail else "")
    if start.start_step:
        where += f"; resuming at step {start.start_step}"
    elif start.attempt.restarts:
        where += "; restarting from the beginning (no checkpoint yet)"
    print(where, file=sys.stderr, flush=True)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, with the run folder it can go on from (the CLI names it)."""

    def __init__(self, folder: RunFolder, again: str):
        super().__init__(str(folder))
        self.folder, self.again = folder, again


@contextlib.contextmanager
def interrupted_names(folder: RunFolder, again: str = "ffpipe train --resume"):
    """Turns Ctrl-C inside into RunInterrupted(folder): `again` + the folder goes on with the run."""
    try:
        yield
    except RunInterrupted:
        raise
    except KeyboardInterrupt as err:
        raise RunInterrupted(folder, again) from err
