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
from pathlib import Path

from ffpipe.backends.ray_cluster import connect
from ffpipe.config import Config
from ffpipe.errors import PipelineError
from ffpipe.progress import Progress
from ffpipe.run import recovery
from ffpipe.run.folder import RunFolder
from ffpipe.run.setup import setup_process, stage_device
from ffpipe.run.start import announce, begin_run, restart_point
from ffpipe.pipeline.replicas import choice
from ffpipe.pipeline.replicas.topology import describe_topology
from ffpipe.run.summary import finish_run, stage_reports

POLL_S = 0.5
FAILURE_GRACE_S = 3.0


def train_ray(cfg: Config, resume: Path | None):
    setup_process(cfg)
    folder = RunFolder.open(resume) if resume else None
    auto = choice.wants_auto(cfg.pipeline)  # needs the cluster's size: set up after joining it
    if not auto:  # before starting Ray: bad data or config end the run at once
        setup, start = begin_run(cfg, folder, stage_device(cfg, 0))
    started = connect(cfg, start.topology.world if not auto else 0)
    import ray  # after connect(): Ray reads its environment when first imported

    try:
        if auto:
            setup, start = begin_run(cfg, folder, stage_device(cfg, 0), processes=_cluster_processes(cfg))
        t0 = time.perf_counter()
        results, topology = _train_with_restarts(cfg, setup, start), start.topology
        leads = [results[topology.rank(k)] for k in range(setup.num_stages)]
        for k, result in enumerate(leads):  # the driver's folder gets every stage's rows
            start.folder.write_stage_metrics(k, result["rows"])
        reports = stage_reports([r["report"] for r in results], topology)
        summary = finish_run(setup, start.folder, reports, leads[-1]["history"], time.perf_counter() - t0)
        return start.folder.path, summary
    finally:
        if started:
            ray.shutdown()


def _cluster_processes(cfg: Config) -> int:
    """pipeline.replicas = 'auto' on Ray: one process per GPU of the cluster, or per
    pipeline.cpus_per_stage CPUs on a cluster without GPUs (or train.device = 'cpu')."""
    import ray

    have = ray.cluster_resources()
    if have.get("GPU", 0) >= 1 and cfg.train.device != "cpu":
        return int(have["GPU"])
    return int(have.get("CPU", 1) // cfg.pipeline.cpus_per_stage)


def _train_with_restarts(cfg: Config, setup, start) -> list[dict]:
    """Attempts of the run: after a stage fails, new actors in a new placement group (a lost
    node's bundle lands elsewhere) go on from the newest checkpoint every stage has."""
    while True:
        try:
            return _attempt(cfg, setup, start)
        except recovery.StageFailed as failure:
            if failure.user_error:
                raise
            failures = start.folder.failures()
            verdict = recovery.restart_verdict(failures, start.attempt, cfg.pipeline.max_restarts)
            if verdict:
                raise PipelineError(f"{failure}; {verdict}") from None
            print(f"ffpipe: {failure}; restarting ({start.attempt.restarts + 1} of "
                  f"{cfg.pipeline.max_restarts}) from the newest checkpoint", file=sys.stderr, flush=True)
            start = restart_point(setup, start)


def _attempt(cfg: Config, setup, start) -> list[dict]:
    import ray

    actors, pg = [], None
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 and cfg.train.device != "cpu" else 0
        pg, actors = _start_actors(cfg, setup, start, gpus)
        nodes = ray.util.placement_group_table(pg)["bundles_to_node_id"]  # rank -> its node's id
        announce(start, describe_topology(start.topology, f"Ray actors, {'GPU' if gpus else 'CPU'}, "
                                                          f"transport {cfg.pipeline.transport}"))
        _connect_stages(cfg, actors, gpus)
        return _watch(cfg, setup, start, actors, gpus, nodes)
    finally:
        for actor in actors:
            ray.kill(actor)
        if pg is not None:
            ray.util.remove_placement_group(pg)


def _start_actors(cfg, setup, start, gpus: int):
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from ffpipe.backends.ray_actor import GROUPS, StageWorker

    n = start.topology.world  # one actor per stage replica
    bundle = {"CPU": cfg.pipeline.cpus_per_stage, **({"GPU": gpus} if gpus else {})}
    have = ray.cluster_resources()
    short = [r for r, v in bundle.items() if have.get(r, 0) < n * v]
    if short:
        raise PipelineError(f"the cluster has {', '.join(f'{have.get(r, 0):g} {r}' for r in short)} "
                            f"but {n} stage actors need {', '.join(f'{n * bundle[r]:g} {r}' for r in short)}; "
                            "use fewer stages (pipeline.stages) or replicas (pipeline.replicas), less "
                            "pipeline.cpus_per_stage, or a larger cluster")
    pg = ray.util.placement_group([dict(bundle) for _ in range(n)], strategy=cfg.pipeline.placement)
    if not pg.wait(timeout_seconds=cfg.pipeline.timeout_s):
        ray.util.remove_placement_group(pg)
        raise PipelineError(f"the cluster cannot place {n} stages of {bundle} with strategy "
                            f"{cfg.pipeline.placement} (it has {ray.cluster_resources()}); use fewer "
                            "stages, another pipeline.placement, or a larger cluster")
    cls = ray.remote(concurrency_groups=GROUPS)(StageWorker)
    actors = [cls.options(num_cpus=cfg.pipeline.cpus_per_stage, num_gpus=gpus, max_restarts=0,
                          scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=k))
              .remote(cfg.to_dict(), k, start, setup.info, cfg.pipeline.transport) for k in range(n)]
    return pg, actors


def _connect_stages(cfg, actors, gpus: int) -> None:
    """p2p: a torch.distributed group; ray: a Ray collective group where RDT needs one."""
    if cfg.pipeline.transport == "p2p":
        host, port = _get(actors[0].address.remote(), 0, cfg)
        _get([a.join.remote(host, port) for a in actors], None, cfg)
        return
    _get([a.progress.remote() for a in actors], None, cfg)  # every actor constructed
    from ffpipe.transport import ray as ray_transport

    ray_transport.connect(actors, cfg.pipeline, gpus)


def _get(refs, stage, cfg):
    import ray

    try:
        return ray.get(refs, timeout=cfg.pipeline.timeout_s)
    except ray.exceptions.RayError as err:
        where = f"stage {stage}" if stage is not None else "a stage actor"
        raise PipelineError(f"{where} failed to start: {_cause(err)}") from None


def _watch(cfg, setup, start, actors, gpus: int, nodes: dict[int, str]) -> list[dict]:
    """Wait for every stage, routing references for the Ray transport, drawing progress, and
    stopping everything at the first failure with the failing stage named."""
    import ray

    from ffpipe.transport.ray import RefRouter

    runs = [a.run.remote() for a in actors]
    router = None
    if cfg.pipeline.transport == "ray":
        router = RefRouter(actors, cfg.pipeline, gpus)
    progress = Progress(setup.plan.total_steps, setup.num_stages, cfg.run.progress)
    shown_results, last_poll, steps = 0, 0.0, [None] * len(actors)
    pending = list(runs)
    while pending:
        waiting = pending + (router.refs() if router else [])
        ready, _ = ray.wait(waiting, num_returns=1, timeout=POLL_S)
        if any(ref in pending and _failed(ref) for ref in ready):
            raise _first_failure(runs, steps, nodes, start)
        pending = [ref for ref in pending if ref not in ready]
        if router:
            router.advance()
        if time.monotonic() - last_poll > 1.0:
            last_poll = time.monotonic()
            shown_results = _draw(actors, progress, shown_results, steps, start.topology)
    _draw(actors, progress, shown_results, steps, start.topology)
    return ray.get(runs)


def _failed(ref) -> bool:
    import ray

    try:
        ray.get(ref, timeout=0)
        return False
    except ray.exceptions.RayError:
        return True


def _first_failure(runs, steps: list, nodes: dict[int, str], start) -> recovery.StageFailed:
    """Every stage's failure, recorded; the root cause returned. Neighbours of a failed stage
    fail too (they lose it): a short grace lets the failed stage's own report arrive first.
    An actor that died is named with its node: where a node is lost, that is what shows it."""
    import ray

    ray.wait(runs, num_returns=len(runs), timeout=FAILURE_GRACE_S)
    failures = []
    for k, ref in enumerate(runs):
        try:
            ray.get(ref, timeout=0)
        except ray.exceptions.GetTimeoutError:
            continue
        except ray.exceptions.RayError as err:
            cause = getattr(err, "cause", None)
            if not isinstance(cause, recovery.StageFailed):  # the actor died without a report
                logged = f" after logging step {steps[k]}" if steps[k] else ""
                cause = recovery.StageFailed(start.topology.place(k).stage, None,
                                             f"the stage actor died{logged} (rank {k}, node {nodes[k]}): "
                                             f"{_cause(err)}")
            failures.append(cause)
    primary = [f for f in failures if not f.secondary] or failures
    for failure in primary[:1] + [f for f in failures if f is not primary[0]]:
        recovery.record(start.folder, failure, start.attempt.number)
    return primary[0]


def _cause(err) -> str:
    """The user-facing cause inside a Ray error: the stage's own exception message if it has one."""
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return str(err).strip().splitlines()[-1][:500]


def _draw(actors, progress: Progress, shown: int, steps: list, topology) -> int:
    import ray

    try:
        states = ray.get([a.progress.remote() for a in actors], timeout=5)
    except ray.exceptions.RayError:
        return shown  # a dead actor shows up in its run() result; progress is best effort
    for k, (step, rows, _) in enumerate(states):
        steps[k] = step  # the last step each actor logged: where a dead actor had got to
        if rows:  # only a stage's replica 0 logs
            progress.update(topology.place(k).stage, step, rows)
    results = states[topology.rank(topology.num_stages - 1)][2]
    for result in results[shown:]:
        progress.result(result)
    return len(results)
