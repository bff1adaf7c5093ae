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

import datetime
import os
import socket
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ffpipe.config import Config
from ffpipe.errors import USER_ERROR_EXIT, ConfigError, FFPipeError, PipelineError, say_error
from ffpipe.progress import Progress
from ffpipe.run import recovery
from ffpipe.run.folder import RunFolder, run_location
from ffpipe.run.setup import announce, begin_run, prepare, setup_process, stage_device
from ffpipe.run.stage_process import run_one_stage
from ffpipe.pipeline.profile import measure_link
from ffpipe.pipeline.topology import Place, Topology, describe_topology
from ffpipe.run.summary import finish_run, stage_report, stage_reports
from ffpipe.transport import open_channel

TEARDOWN_S = 60.0  # the longest the end of a finished run waits for its process groups to close


def _world() -> tuple[int, int, int]:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigError("pipeline.backend = 'torchrun' must be started by torchrun, e.g. "
                          "launch/torchrun.sh 2, or torchrun --standalone --nproc-per-node=2 -m "
                          "ffpipe train --set pipeline.backend=torchrun")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))


def resolve_stages(cfg: Config, world: int) -> Config:
    """One stage per process: pipeline.stages left at 1 means 'as many as torchrun started';
    with pipeline.replicas, one process per replica."""
    replicas = cfg.pipeline.replicas
    if replicas == "auto":
        if cfg.pipeline.stages > world:
            raise ConfigError(f"pipeline.stages = {cfg.pipeline.stages} but torchrun started {world} "
                              "processes; pipeline.replicas = 'auto' needs at least one per stage")
        return cfg
    if replicas:
        if sum(replicas) != world:
            raise ConfigError(f"pipeline.replicas = {replicas} needs {sum(replicas)} processes but "
                              f"torchrun started {world}; use --nproc-per-node={sum(replicas)}")
        return cfg
    if cfg.pipeline.stages not in (1, world):
        raise ConfigError(f"pipeline.stages = {cfg.pipeline.stages} but torchrun started {world} "
                          f"processes; use --nproc-per-node={cfg.pipeline.stages} or leave "
                          "pipeline.stages at 1")
    cfg.pipeline.stages = world
    cfg.validate()
    return cfg


def init_groups(device: torch.device, timeout_s: float, rank: int, world: int, store=None):
    """The default group (NCCL on GPU, gloo on CPU); returns a gloo group for the channels'
    headers and acknowledgements (None on CPU: the default group is gloo). Without a `store`,
    torchrun's environment tells the ranks where to meet."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    control = dist.new_group(backend="gloo") if backend == "nccl" else None
    return control


def socket_for(host: str) -> socket.socket:
    """A TCP socket of the family of `host` (an IPv6 address has colons)."""
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)


def rendezvous_store(host: str, port: int, rank: int, world: int, timeout_s: float):
    """Where stage processes started by Ray meet: a TCP store hosted by rank 0 on `host` only;
    returns (store, listening socket or None: the caller keeps it open as long as the store).
    (Given just an address, torch's store listens on every interface; a socket bound to the
    node's own address, 127.0.0.1 for a local cluster, keeps it there.)"""
    timeout = datetime.timedelta(seconds=timeout_s)
    if rank != 0:
        return dist.TCPStore(host, port, world, False, timeout), None
    listener = socket_for(host)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen()
    store = dist.TCPStore(host, port, world, True, timeout, wait_for_workers=False,
                          master_listen_fd=listener.fileno())
    return store, listener


def replica_group(topology: Topology, place: Place):
    """The process group of this rank's stage replicas (None when its stage has one). Every rank
    creates every group, in the same order: new_group is collective."""
    mine = None
    for stage in range(topology.num_stages):
        if topology.replicas[stage] > 1:
            group = dist.new_group(topology.stage_ranks(stage))
            mine = group if stage == place.stage else mine
    return mine


def pair_groups(topology: Topology) -> dict[tuple[int, int], object]:
    """A process group for each pair of ranks that exchange batches (every rank creates every
    group, in the same order). On the default group NCCL runs all of a rank's sends and receives
    on one stream, one after another: a middle stage could not take in batch k+1 while its send
    of batch k waited for the next stage, and the stage before it waited in turn."""
    groups = {}
    for pair in topology.channel_pairs():
        group = dist.new_group(list(pair))
        if dist.get_rank() in pair:
            groups[pair] = group
    return groups


def data_group(groups: dict, rank: int, peer: int):
    """The group of the channel between `rank` and `peer` (see pair_groups)."""
    return groups[(min(rank, peer), max(rank, peer))]


def share(obj, group=None):
    """Rank 0's `obj` on every rank (an exception from rank 0 is raised on every rank)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def train_torchrun(cfg: Config, resume: Path | None):
    rank, world, local_rank = _world()
    restarts = recovery.restarts_from_env()
    ctx = {"rank": rank, "folder": None, "attempt": None}
    try:
        cfg = resolve_stages(cfg, world)
        setup_process(cfg)
        device = stage_device(cfg, rank, local_rank)
        control = init_groups(device, cfg.pipeline.timeout_s, rank, world)
        result = _run_rank(cfg, resume, restarts, rank, world, device, control, ctx)
    except BaseException as err:  # noqa: BLE001 - every way out of a failed rank is the one below
        _exit_failed(err, ctx)
    _destroy_groups(TEARDOWN_S)
    return result


def _destroy_groups(timeout_s: float) -> None:
    """Destroy the process groups, waiting at most `timeout_s`: the run is done and saved, and a
    teardown that blocks (NCCL waiting on something that will never come) must not hang it; the
    process ends with os._exit (cli.run), which stops the waiting thread."""
    done = threading.Event()
    threading.Thread(target=lambda: (dist.destroy_process_group(), done.set()), daemon=True).start()
    if not done.wait(timeout_s):
        print(f"ffpipe: warning: the process groups were not torn down within {timeout_s:g} s; "
              "leaving without it (the run itself is complete)", file=sys.stderr, flush=True)


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
    group = replica_group(topology, place)
    pairs = pair_groups(topology)
    channel = lambda peer: open_channel("p2p", cfg.pipeline, peer=peer, device=device,  # noqa: E731
                                        peer_stage=topology.place(peer).stage,
                                        groups=(data_group(pairs, rank, peer), control))
    t0 = time.perf_counter()
    logger, sink = run_one_stage(setup, start, place, device, channel, progress.update, progress.result, group)
    gathered = [None] * world if rank == 0 else None
    dist.gather_object((stage_report(logger), sink.history if sink else None), gathered, dst=0, group=control)
    if rank != 0:
        return start.folder.path, None
    reports = stage_reports([r for r, _ in gathered], topology)
    summary = finish_run(setup, start.folder, reports, gathered[last][1], time.perf_counter() - t0)
    return start.folder.path, summary


def _measure_link(cfg: Config, resume: Path | None, restarts: int, device) -> float | None:
    """Seconds per byte between ranks 0 and 1, where a new run balances its split by measured
    costs (every rank decides alike and joins the measurement)."""
    balanced = cfg.pipeline.stages > 1 and not cfg.pipeline.boundaries
    if resume or restarts or not (balanced or cfg.pipeline.replicas == "auto"):
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
    elif rank == 0 or not interrupted:
        print("ffpipe: interrupted" if interrupted else f"ffpipe: error: {err}", file=sys.stderr, flush=True)
    if not isinstance(err, FFPipeError) and not interrupted and not isinstance(err, recovery.StageFailed):
        import traceback
        traceback.print_exception(err, file=sys.stderr)
    _abort_groups()
    sys.stdout.flush()
    sys.stderr.flush()
    user = (setup_error and not isinstance(err, PipelineError)) or getattr(err, "user_error", False)
    os._exit(130 if interrupted else USER_ERROR_EXIT if user else 1)


def _abort_groups() -> None:
    """Abort every process group without waiting for peers (NCCL: ncclCommAbort)."""
    if not dist.is_initialized():
        return
    try:
        dist.distributed_c10d._abort_process_group()
    except Exception:  # noqa: BLE001 - gloo cannot abort and needs not: the process exits next
        pass
