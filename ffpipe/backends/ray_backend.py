"""The Ray backend: every stage a Ray actor in a placement group, one GPU each where there are GPUs.

The driver connects to a cluster (or starts a local one on 127.0.0.1), reserves one bundle per
stage, starts the actors and watches them. With `pipeline.transport = "p2p"` the actors form a
torch.distributed group and stream to each other exactly as torchrun ranks do. With "ray" the
data moves as Ray objects (Ray Direct Transport over NCCL between GPU actors): Ray lets only the
process that made the collective group pass such objects, so the driver routes the references
(never the data) from each stage's outbox to the next stage's inbox, a bounded window at a time.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

from ffpipe.config import Config
from ffpipe.errors import PipelineError
from ffpipe.progress import Progress
from ffpipe.run import write_stage_metrics
from ffpipe.session import begin_run
from ffpipe.trainer import finish_run, setup_process, stage_device

POLL_S = 0.5


# Ray on Linux replaces a loopback node address by the machine's routable one; this switch (the
# one Ray uses on laptops) keeps a single-machine cluster's GCS, raylet and workers on 127.0.0.1.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def connect(cfg: Config, num_stages: int) -> bool:
    """Join the configured cluster, or start a local one on 127.0.0.1 (Ray's token authentication
    stays on). Returns whether this process started Ray (and so must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    if cfg.pipeline.address:
        ray.init(address=cfg.pipeline.address, log_to_driver=True)
        return False
    os.environ.update(LOOPBACK_ONLY)
    # CPUs are a logical resource: a small machine still gets one per stage (they share the cores).
    cpus = max(os.cpu_count() or 1, math.ceil(num_stages * cfg.pipeline.cpus_per_stage))
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True)
    return True


def train_ray(cfg: Config, resume_dir: Path | None):
    import ray

    setup_process(cfg)
    setup, start = begin_run(cfg, resume_dir, stage_device(cfg, 0))
    started = connect(cfg, setup.num_stages)
    actors, pg = [], None
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 and cfg.train.device != "cpu" else 0
        pg, actors = _start_actors(cfg, setup, start, gpus)
        print(f"ffpipe: run folder {start.run_dir}, {len(actors)} stage actors "
              f"({'GPU' if gpus else 'CPU'}, transport {cfg.pipeline.transport})", file=sys.stderr)
        _connect_stages(cfg, actors, gpus)
        t0 = time.perf_counter()
        results = _watch(cfg, setup, actors, gpus)
        for k, result in enumerate(results):  # the driver's folder gets every stage's rows
            write_stage_metrics(start.run_dir, k, result["rows"])
        reports = [r["report"] for r in results]
        summary = finish_run(setup, start.run_dir, reports, results[-1]["history"], time.perf_counter() - t0)
        return start.run_dir, summary
    finally:
        for actor in actors:
            ray.kill(actor)
        if pg is not None:
            ray.util.remove_placement_group(pg)
        if started:
            ray.shutdown()


def _start_actors(cfg, setup, start, gpus: int):
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from ffpipe.backends.ray_actor import GROUPS, StageWorker

    n = setup.num_stages
    bundle = {"CPU": cfg.pipeline.cpus_per_stage, **({"GPU": gpus} if gpus else {})}
    have = ray.cluster_resources()
    short = [r for r, v in bundle.items() if have.get(r, 0) < n * v]
    if short:
        raise PipelineError(f"the cluster has {', '.join(f'{have.get(r, 0):g} {r}' for r in short)} "
                            f"but {n} stages need {', '.join(f'{n * bundle[r]:g} {r}' for r in short)}; "
                            "use fewer stages (pipeline.stages), less pipeline.cpus_per_stage, or a larger cluster")
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


def tensor_transport(cfg, gpus: int) -> str:
    choice = cfg.pipeline.ray_tensor_transport
    if choice == "auto":
        return "nccl" if gpus else "object_store"
    if choice == "nccl" and not gpus:
        raise PipelineError("pipeline.ray_tensor_transport = 'nccl' needs GPU actors; use 'auto', "
                            "'object_store' or 'gloo' on CPUs")
    return choice


def _connect_stages(cfg, actors, gpus: int) -> None:
    """p2p: a torch.distributed group; ray: a Ray collective group where RDT needs one."""
    if cfg.pipeline.transport == "p2p":
        host, port = _get(actors[0].address.remote(), 0, cfg)
        _get([a.join.remote(host, port) for a in actors], None, cfg)
        return
    _get([a.progress.remote() for a in actors], None, cfg)  # every actor constructed
    backend = {"nccl": "nccl", "gloo": "torch_gloo"}.get(tensor_transport(cfg, gpus))
    if backend:
        from ray.experimental.collective import create_collective_group

        create_collective_group(actors, backend=backend)


def _get(refs, stage, cfg):
    import ray

    try:
        return ray.get(refs, timeout=cfg.pipeline.timeout_s)
    except ray.exceptions.RayError as err:
        where = f"stage {stage}" if stage is not None else "a stage actor"
        raise PipelineError(f"{where} failed to start: {_cause(err)}") from None


def _watch(cfg, setup, actors, gpus: int) -> list[dict]:
    """Wait for every stage, routing references for the Ray transport, drawing progress, and
    stopping everything at the first failure with the failing stage named."""
    import ray

    from ffpipe.transport.ray_refs import RefRouter

    runs = [a.run.remote() for a in actors]
    router = None
    if cfg.pipeline.transport == "ray":
        router = RefRouter(actors, cfg.pipeline.queue_depth, tensor_transport(cfg, gpus))
    progress = Progress(setup.plan.total_steps, len(actors), cfg.run.progress)
    shown_results, last_poll = 0, 0.0
    pending = list(runs)
    while pending:
        waiting = pending + (router.refs() if router else [])
        ready, _ = ray.wait(waiting, num_returns=1, timeout=POLL_S)
        for ref in ready:
            if ref in pending:
                _check(ref, runs)
                pending.remove(ref)
        if router:
            router.advance()
        if time.monotonic() - last_poll > 1.0:
            last_poll = time.monotonic()
            shown_results = _draw(actors, progress, shown_results)
    _draw(actors, progress, shown_results)
    return ray.get(runs)


def _check(ref, runs) -> None:
    import ray

    try:
        ray.get(ref)
    except ray.exceptions.RayError as err:
        raise PipelineError(f"stage {runs.index(ref)} failed: {_cause(err)}") from None


def _cause(err) -> str:
    """The user-facing cause inside a Ray error: the stage's own exception message if it has one."""
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return str(err).strip().splitlines()[-1][:500]


def _draw(actors, progress: Progress, shown: int) -> int:
    import ray

    try:
        states = ray.get([a.progress.remote() for a in actors], timeout=5)
    except ray.exceptions.RayError:
        return shown  # a dead actor shows up in its run() result; progress is best effort
    for k, (step, rows, _) in enumerate(states):
        if rows:
            progress.update(k, step, rows)
    results = states[-1][2]
    for result in results[shown:]:
        progress.result(result)
    return len(results)
