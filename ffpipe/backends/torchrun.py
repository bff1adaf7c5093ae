"""The torchrun backend: one stage per process (rank k runs stage k), joined by p2p channels.

    launch/torchrun.sh S [--config FILE] [--set ...]       # restarts a failed run by itself
    torchrun --standalone --nproc-per-node=S -m ffpipe train --set pipeline.backend=torchrun ...

Rank 0 reads the data, chooses the stage split and the run folder, and tells the others (which
never load images). Every rank trains its stage with `run_one_stage`; rank 0 then gathers the
stage reports and the last stage's results and writes the summary.

A rank that fails records why in the run folder, says so in one line, aborts its communicators
and exits at once: torchrun then stops the other ranks (a rank left waiting in NCCL teardown, or
in a host sync behind a transfer that will never come, was how a failed run hung). A restarted
run (torchrun's --max-restarts, or launch/torchrun.sh) resumes from the run folder's checkpoints.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch.distributed as dist

from ffpipe.config import Config
from ffpipe.errors import USER_ERROR_EXIT, ConfigError, FFPipeError, PipelineError, say_error
from ffpipe.telemetry.progress import Progress
from ffpipe.run import recovery
from ffpipe.run.folder import RunFolder, run_location
from ffpipe.run.setup import prepare, setup_process, stage_device
from ffpipe.run.start import announce, begin_run
from ffpipe.run.stage_process import run_one_stage
from ffpipe.pipeline.profile import measure_link
from ffpipe.pipeline.replicas import choice
from ffpipe.pipeline.replicas.topology import describe_topology
from ffpipe.run.summary import finish_run, stage_report, stage_reports
from ffpipe.transport.groups import abort_groups, destroy_groups, init_groups, share, stage_groups


def _world() -> tuple[int, int, int]:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigError("pipeline.backend = 'torchrun' must be started by torchrun, e.g. "
                          "launch/torchrun.sh 2, or torchrun --standalone --nproc-per-node=2 -m "
                          "ffpipe train --set pipeline.backend=torchrun")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))


def resolve_stages(cfg: Config, world: int) -> Config:
    """One stage per process: pipeline.stages left at 1 means 'as many as torchrun started';
    with pipeline.replicas, one process per replica."""
    if choice.fix_processes(cfg.pipeline, world, "torchrun started"):
        return cfg
    if cfg.pipeline.stages not in (1, world):
        raise ConfigError(f"pipeline.stages = {cfg.pipeline.stages} but torchrun started {world} "
                          f"processes; use --nproc-per-node={cfg.pipeline.stages} or leave "
                          "pipeline.stages at 1")
    cfg.pipeline.stages = world
    cfg.validate()
    return cfg


def train_torchrun(cfg: Config, resume: Path | None):
    rank, world, local_rank = _world()
    restarts = recovery.restarts_from_env()
    ctx = {"rank": rank, "world": world, "folder": None, "attempt": None}
    try:
        cfg = resolve_stages(cfg, world)
        setup_process(cfg)
        device = stage_device(cfg, rank, local_rank)
        control = init_groups(device, cfg.pipeline.timeout_s, rank, world)
        result = _run_rank(cfg, resume, restarts, rank, world, device, control, ctx)
    except BaseException as err:  # noqa: BLE001 - every way out of a failed rank is the one below
        _exit_failed(err, ctx)
    destroy_groups()
    return result


def _run_rank(cfg, resume, restarts, rank, world, device, control, ctx):
    link = _measure_link(cfg, resume, restarts, device)
    if rank == 0:
        try:
            setup, start = _begin(cfg, resume, restarts, device, world, link)
            payload = (setup.info, start)
        except Exception as err:  # noqa: BLE001 - every rank must hear of it, not wait for it
            payload = err
        info, start = share(payload, control)
    else:
        info, start = share(None, control)
    topology = start.topology
    place = topology.place(rank)
    if rank != 0:  # stage 0's replicas read the data too (each keeps its rows of every batch)
        setup = prepare(cfg, info=None if place.stage == 0 else info, starts=start.starts)
    ctx["folder"], ctx["attempt"] = start.folder, start.attempt.number
    last = topology.rank(setup.num_stages - 1)
    progress = Progress(setup.plan.total_steps, setup.num_stages, cfg.run.progress and rank == last)
    if rank == 0:
        announce(start, describe_topology(topology, "torchrun"))
    groups = stage_groups(topology, place, control)
    link = groups.p2p_links(cfg.pipeline, topology, rank, device)
    t0 = time.perf_counter()
    on_log = _shared_progress(progress, drawing=rank == last)
    logger, sink = run_one_stage(setup, start, place, device, link, on_log, progress.result, groups.replica)
    gathered = [None] * world if rank == 0 else None
    dist.gather_object((stage_report(logger), sink.history if sink else None), gathered, dst=0, group=control)
    if rank != 0:
        return start.folder.path, None
    reports = stage_reports([r for r, _ in gathered], topology)
    summary = finish_run(setup, start.folder, reports, gathered[last][1], time.perf_counter() - t0)
    return start.folder.path, summary


def _shared_progress(progress: Progress, drawing: bool):
    """on_log of a rank: its stage's images/s go into torchrun's store, and the rank that draws
    the progress line reads every other stage's from there (each process logs its own only)."""
    store = dist.distributed_c10d._get_default_store()

    def on_log(stage_id: int, step: int, rows: list[dict]) -> None:
        store.set(f"ffpipe/rate/{stage_id}", repr(rows[0]["images_per_s"]))
        if drawing:
            keys = [f"ffpipe/rate/{k}" for k in range(progress.num_stages) if k != stage_id]
            for key in keys:
                if store.check([key]):
                    progress.rates[int(key.rsplit("/", 1)[1])] = float(store.get(key))
        progress.update(stage_id, step, rows)

    return on_log


def _measure_link(cfg: Config, resume: Path | None, restarts: int, device) -> float | None:
    """Seconds per byte between ranks 0 and 1, where a new run balances its split by measured
    costs (every rank decides alike and joins the measurement)."""
    balanced = cfg.pipeline.stages > 1 and not cfg.pipeline.boundaries
    if resume or restarts or not (balanced or choice.wants_auto(cfg.pipeline)):
        return None
    return measure_link(device)


def _begin(cfg: Config, resume: Path | None, restarts: int, device, world: int, link: float | None = None):
    """Rank 0: a new run, a resumed one, or (a restarted attempt) this run again from its folder."""
    if restarts == 0:
        folder = RunFolder.open(resume) if resume else None
        return begin_run(cfg, folder, device, _session_attempt(folder, 0), processes=world, link=link)
    if not resume and not cfg.run.dir:
        raise PipelineError("torchrun restarted this run, but without run.dir the restarted ranks "
                            "cannot find its checkpoints: set run.dir (launch/torchrun.sh does)")
    folder = RunFolder.open(resume or run_location(cfg))
    attempt = _session_attempt(folder, restarts)
    failed = recovery.Attempt(attempt.number - 1, attempt.first)
    verdict = recovery.restart_verdict(folder.failures(), failed, cfg.pipeline.max_restarts)
    if verdict:  # torchrun's own restarts: a deterministic failure ends here, before training
        cause = recovery.root_cause(folder.failures(), failed.number) or {}
        raise PipelineError(f"stage {cause.get('stage')} failed: {cause.get('cause')}; {verdict}")
    return begin_run(cfg, folder, None, attempt, processes=world)


def _session_attempt(folder: RunFolder | None, restarts: int) -> recovery.Attempt:
    """This attempt of the session: launch/torchrun.sh names the session's first attempt; under
    torchrun's own restarts it is the one after the last attempt recorded, less the restarts made
    since (exact unless an attempt ended with no stage recording why: a killed process records
    nothing, and launch/torchrun.sh records it in its place)."""
    given = os.environ.get("FFPIPE_FIRST_ATTEMPT")
    first = int(given) if given is not None else max(0, recovery.Attempt.first_of(folder).first - restarts)
    return recovery.Attempt(first + restarts, first)


def _exit_failed(err: BaseException, ctx: dict) -> None:
    """Say what failed (once), record it, abort the communicators and leave now: a clean
    teardown of NCCL with a dead peer can block forever."""
    rank, folder = ctx["rank"], ctx["folder"]
    interrupted = isinstance(err, KeyboardInterrupt)
    setup_error = isinstance(err, FFPipeError) and not isinstance(err, recovery.StageFailed)
    if isinstance(err, recovery.StageFailed) and folder is not None:
        recovery.record(folder, err, ctx["attempt"])
    if setup_error:
        say_error(f"ffpipe: error: {err}")  # every rank hits the same set-up error: rank 0 says it
    elif interrupted and rank == 0:
        again = f"; the run goes on with: launch/torchrun.sh {ctx['world']} --resume {folder}" if folder else ""
        print(f"ffpipe: interrupted{again}", file=sys.stderr, flush=True)
    elif not interrupted:
        print(f"ffpipe: error: {err}", file=sys.stderr, flush=True)
    if not isinstance(err, FFPipeError) and not interrupted and not isinstance(err, recovery.StageFailed):
        import traceback
        traceback.print_exception(err, file=sys.stderr)
    abort_groups()
    sys.stdout.flush()
    sys.stderr.flush()
    user = (setup_error and not isinstance(err, PipelineError)) or getattr(err, "user_error", False)
    os._exit(130 if interrupted else USER_ERROR_EXIT if user else 1)

