"""The Ray backend: every stage a Ray actor in a placement group, one GPU each where there are GPUs.

The driver connects to a cluster (or starts a local one on 127.0.0.1), reserves one bundle per
stage, starts the actors and watches them. With `pipeline.transport = "p2p"` the actors form a
torch.distributed group and stream to each other exactly as torchrun ranks do. With "ray" the
data moves as Ray objects (Ray Direct Transport over NCCL between GPU actors): Ray lets only the
process that made the collective group pass such objects, so the driver routes the references
(never the data) from each stage's outbox to the next stage's inbox, a bounded window at a time.
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

from ffpipe.backends.ray_cluster import connect, stage_slots
from ffpipe.backends.ray_watch import cause_of, failed, watch
from ffpipe.config import Config
from ffpipe.errors import PipelineError
from ffpipe.pipeline.replicas import choice
from ffpipe.pipeline.replicas.topology import describe_topology
from ffpipe.run import recovery
from ffpipe.run.folder import RunFolder
from ffpipe.run.setup import setup_process, stage_device
from ffpipe.run.start import announce, begin_run, interrupted_names, pick_up, restart_point
from ffpipe.run.summary import finish_run, stage_reports

# pipeline.elastic: how long a restart that cannot place its actors keeps trying, each try
# pipeline.timeout_s long, for Ray to notice a lost node (its health checks: ~15 s) and the
# layout to shrink to what is left
LOST_NODE_S = 120.0
# A stage actor starts within the longer of this and pipeline.timeout_s: it builds its part of
# the model first (stage 0 also reads the data), which a neighbour's deadline should not bound.
STAGE_START_S = 120.0
KILL_GRACE_S = 10.0  # how long the driver waits for killed actors to end before it sweeps their temporaries


def train_ray(cfg: Config, resume: Path | None):
    setup_process(cfg)
    folder = RunFolder.open(resume) if resume else None
    auto = choice.wants_auto(cfg.pipeline)  # needs the cluster's size: set up after joining it
    setup = start = None
    if not auto:  # before starting Ray: bad data or config end the run at once
        setup, start = begin_run(cfg, folder, stage_device(cfg, 0))
    try:
        started = connect(cfg, start.topology.world if not auto else 0)
    except BaseException:
        if not auto and folder is None:
            start.folder.forget_unstarted()  # no stage ran: the same run.dir may be used again
        raise
    import ray  # after connect(): Ray reads its environment when first imported

    try:
        if auto:
            setup, start = begin_run(cfg, folder, stage_device(cfg, 0), processes=_cluster_processes(cfg))
        with interrupted_names(start.folder):
            t0 = time.perf_counter()
            results, start = _train_with_restarts(cfg, setup, start)
            return start.folder.path, _finish(setup, start, results, time.perf_counter() - t0)
    finally:
        if started:
            ray.shutdown()  # this cluster's processes end: nothing of the run writes any more
            if start is not None:
                start.folder.sweep_temporaries()


def _finish(setup, start, results: list[dict], seconds: float) -> dict:
    topology = start.topology
    leads = [results[topology.rank(k)] for k in range(setup.num_stages)]
    for k, result in enumerate(leads):  # the driver's folder gets every stage's rows
        start.folder.write_stage_metrics(k, result["rows"])
    reports = stage_reports([r["report"] for r in results], topology)
    return finish_run(setup, start.folder, reports, leads[-1]["history"], seconds)


def _cluster_processes(cfg: Config) -> int:
    """pipeline.replicas = 'auto' on Ray: one process per GPU of the cluster, or per
    pipeline.cpus_per_stage CPUs on a cluster without GPUs (or train.device = 'cpu')."""
    import ray

    have = ray.cluster_resources()
    if have.get("GPU", 0) >= 1 and cfg.train.device != "cpu":
        return int(have["GPU"])
    return int(have.get("CPU", 1) // cfg.pipeline.cpus_per_stage)


def _train_with_restarts(cfg: Config, setup, start) -> tuple[list[dict], object]:
    """Attempts of the run: after a stage fails, new actors in a new placement group (a lost
    node's bundle lands elsewhere) go on from the newest complete checkpoint, on the layout
    asked for where the cluster holds it, else (pipeline.elastic) on what fits."""
    asked, waited_since = (list(setup.starts), start.replicas), None
    while True:
        try:
            return _attempt(cfg, setup, start), start
        except _NoRoom as short:  # after a failure, a lost node may be noticed only now
            waited_since = waited_since or time.monotonic()
            if not (start.attempt.restarts and cfg.pipeline.elastic) or time.monotonic() - waited_since > LOST_NODE_S:
                raise PipelineError(str(short)) from None
            setup.starts, replicas = _fit(cfg, setup, asked)  # the same attempt, on what fits now
            start = pick_up(setup, replace(start, starts=setup.starts, replicas=replicas))
        except recovery.StageFailed as failure:
            if failure.user_error:
                raise
            verdict = recovery.restart_verdict(start.folder.failures(), start.attempt, cfg.pipeline.max_restarts)
            if verdict:
                raise PipelineError(f"{failure}; {verdict}") from None
            print(f"ffpipe: {failure}; restarting ({start.attempt.restarts + 1} of "
                  f"{cfg.pipeline.max_restarts}) from the newest checkpoint", file=sys.stderr, flush=True)
            setup.starts, replicas = _fit(cfg, setup, asked)
            start, waited_since = restart_point(setup, start, replicas), None


def _fit(cfg: Config, setup, asked: tuple[list[int], tuple[int, ...]]) -> tuple[list[int], tuple[int, ...]]:
    """The layout asked for, or with pipeline.elastic what the cluster's live nodes hold now."""
    if not cfg.pipeline.elastic:
        return asked
    slots = stage_slots(_bundle(cfg, _gpus(cfg)))
    return choice.fit_layout(*asked, len(setup.learners), max(slots, 1), setup.costs, setup.loader_floor)


class _NoRoom(PipelineError):
    """The cluster did not place the stage actors within pipeline.timeout_s."""


def _gpus(cfg: Config) -> int:
    """GPUs per stage actor: one where the cluster has GPUs (and train.device allows)."""
    import ray

    return 1 if ray.cluster_resources().get("GPU", 0) >= 1 and cfg.train.device != "cpu" else 0


def _bundle(cfg: Config, gpus: int) -> dict:
    return {"CPU": cfg.pipeline.cpus_per_stage, **({"GPU": gpus} if gpus else {})}


def _attempt(cfg: Config, setup, start) -> list[dict]:
    import ray

    actors, pg, runs = [], None, []
    try:
        gpus = _gpus(cfg)
        pg, actors = _start_actors(cfg, setup, start, gpus)
        nodes = ray.util.placement_group_table(pg)["bundles_to_node_id"]  # rank -> its node's id
        announce(start, describe_topology(start.topology, f"Ray actors, {'GPU' if gpus else 'CPU'}, "
                                                          f"transport {cfg.pipeline.transport}"))
        try:
            _connect_stages(cfg, actors, gpus, [start.topology.place(k).stage for k in range(len(actors))])
        except recovery.StageFailed as failure:
            recovery.record(start.folder, failure, start.attempt.number)
            raise
        runs += [a.run.remote() for a in actors]
        return watch(cfg, setup, start, actors, runs, gpus, nodes)
    finally:
        for actor in actors:
            ray.kill(actor)
        if runs:  # the killed actors have stopped (and stopped writing) once their calls end
            ray.wait(runs, num_returns=len(runs), timeout=KILL_GRACE_S)
        if pg is not None:
            ray.util.remove_placement_group(pg)
        start.folder.sweep_temporaries()  # what a killed stage was writing


def _start_actors(cfg, setup, start, gpus: int):
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from ffpipe.backends.ray_actor import GROUPS, StageWorker

    n = start.topology.world  # one actor per stage replica
    bundle = _bundle(cfg, gpus)
    have = ray.cluster_resources()
    short = [r for r, v in bundle.items() if have.get(r, 0) < n * v]
    if short:
        raise _NoRoom(f"the cluster has {', '.join(f'{have.get(r, 0):g} {r}' for r in short)} "
                      f"but {n} stage actors need {', '.join(f'{n * bundle[r]:g} {r}' for r in short)}; "
                      "use fewer stages (pipeline.stages) or replicas (pipeline.replicas), less "
                      "pipeline.cpus_per_stage, or a larger cluster")
    pg = ray.util.placement_group([dict(bundle) for _ in range(n)], strategy=cfg.pipeline.placement)
    if not pg.wait(timeout_seconds=cfg.pipeline.timeout_s):
        ray.util.remove_placement_group(pg)
        raise _NoRoom(f"the cluster cannot place {n} stages of {bundle} with strategy "
                      f"{cfg.pipeline.placement} within pipeline.timeout_s (it has {ray.cluster_resources()}); "
                      "use fewer stages, another pipeline.placement, or a larger cluster")
    cls = ray.remote(concurrency_groups=GROUPS)(StageWorker)
    actors = [cls.options(num_cpus=cfg.pipeline.cpus_per_stage, num_gpus=gpus, max_restarts=0,
                          scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=k))
              .remote(cfg.to_dict(), k, start, setup.info, cfg.pipeline.transport) for k in range(n)]
    return pg, actors


def _connect_stages(cfg, actors, gpus: int, stages: list[int]) -> None:
    """p2p: a torch.distributed group; ray: a Ray collective group where RDT needs one."""
    if cfg.pipeline.transport == "p2p":
        (host, port), = _get([actors[0].address.remote()], [0], cfg)
        _get([a.join.remote(host, port) for a in actors], stages, cfg)
        return
    _get([a.progress.remote() for a in actors], stages, cfg)  # every actor constructed
    from ffpipe.transport import ray as ray_transport

    ray_transport.connect(actors, cfg.pipeline, gpus)


def _first_error(refs: list) -> int:
    """The index of a ref that is ready and holds an error (0 if none does)."""
    import ray

    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    return next((k for k, ref in enumerate(refs) if ref in ready and failed(ref)), 0)


def _get(refs: list, stages: list[int], cfg) -> list:
    """What starting stage actors answer (refs[k] from an actor of stages[k]), within the longer
    of pipeline.timeout_s and STAGE_START_S; a stage that fails or does not start in time is a
    StageFailed that names it (a user error in it, e.g. missing data, is not restarted)."""
    import ray

    deadline = max(cfg.pipeline.timeout_s, STAGE_START_S)
    try:
        return ray.get(refs, timeout=deadline)
    except ray.exceptions.GetTimeoutError:
        _, late = ray.wait(refs, num_returns=len(refs), timeout=0)
        names = sorted({stages[k] for k, ref in enumerate(refs) if ref in late}) or sorted(set(stages))
        raise recovery.StageFailed(names[0], None, f"the actor of stage(s) {', '.join(map(str, names))} did "
                                   f"not start within {deadline:.0f} s (the longer of pipeline.timeout_s and "
                                   f"{STAGE_START_S:.0f} s): it builds its part of the model first, and stage 0 "
                                   "reads the data; on a loaded cluster raise pipeline.timeout_s") from None
    except ray.exceptions.RayError as err:
        failed = _first_error(refs)
        cause = getattr(err, "cause", None)
        if isinstance(cause, BaseException):
            raise recovery.StageFailed.of(stages[failed], None, cause) from None
        raise recovery.StageFailed(stages[failed], None, f"the stage actor failed to start: {cause_of(err)}") from None
