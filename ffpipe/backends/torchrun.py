"""The torchrun backend: one stage per process (rank k runs stage k), joined by p2p channels.

    torchrun --standalone --nproc-per-node=S -m ffpipe train --set pipeline.backend=torchrun

Rank 0 reads the data, chooses the stage split and the run folder, and tells the others (which
never load images). Every rank trains its stage with `run_stage_loop`; rank 0 then gathers the
stage reports and the last stage's results and writes the summary.
"""
from __future__ import annotations

import datetime
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ffpipe.config import Config
from ffpipe.errors import ConfigError
from ffpipe.progress import Progress
from ffpipe.session import begin_run, run_one_stage
from ffpipe.trainer import finish_run, prepare, setup_process, stage_device, stage_report
from ffpipe.transport.p2p import P2PChannel


def _world() -> tuple[int, int, int]:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigError("pipeline.backend = 'torchrun' must be started by torchrun, e.g. "
                          "torchrun --standalone --nproc-per-node=2 -m ffpipe train "
                          "--set pipeline.backend=torchrun (or use launch/torchrun.sh)")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))


def resolve_stages(cfg: Config, world: int) -> Config:
    """One stage per process: pipeline.stages left at 1 means 'as many as torchrun started'."""
    if cfg.pipeline.stages not in (1, world):
        raise ConfigError(f"pipeline.stages = {cfg.pipeline.stages} but torchrun started {world} "
                          f"processes; use --nproc-per-node={cfg.pipeline.stages} or leave "
                          "pipeline.stages at 1")
    cfg.pipeline.stages = world
    cfg.validate()
    return cfg


def init_groups(device: torch.device, timeout_s: float, rank: int, world: int, init_method: str | None = None):
    """Default group (NCCL on GPU, gloo on CPU) for tensors; a gloo group for headers and acks."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    control = dist.new_group(backend="gloo") if backend == "nccl" else None
    return None, control


def share(obj, group=None):
    """Rank 0's `obj` on every rank (an exception from rank 0 is raised on every rank)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def train_torchrun(cfg: Config, resume_dir: Path | None):
    rank, world, local_rank = _world()
    cfg = resolve_stages(cfg, world)
    setup_process(cfg)
    device = stage_device(cfg, rank, local_rank)
    data_group, control = init_groups(device, cfg.pipeline.timeout_s, rank, world)
    try:
        return _run_rank(cfg, resume_dir, rank, world, device, data_group, control)
    finally:
        dist.destroy_process_group()


def _run_rank(cfg, resume_dir, rank, world, device, data_group, control):
    if rank == 0:
        try:
            setup, start = begin_run(cfg, resume_dir, device)
            payload = (setup.info, start)
        except Exception as err:  # noqa: BLE001 - every rank must hear of it, not wait for it
            payload = err
        info, start = share(payload, control)
    else:
        info, start = share(None, control)
        setup = prepare(cfg, info=info, starts=start.starts)
    last = world - 1
    progress = Progress(setup.plan.total_steps, world, cfg.run.progress and rank == last)
    if rank == 0:
        print(f"ffpipe: run folder {start.run_dir}, {world} stages (torchrun)", file=sys.stderr)
    channel = lambda peer: P2PChannel(peer, peer, device, cfg.pipeline.queue_depth,  # noqa: E731
                                      cfg.pipeline.timeout_s, data_group, control)
    t0 = time.perf_counter()
    logger, sink = run_one_stage(setup, start, rank, device, channel, progress.update, progress.result)
    gathered = [None] * world if rank == 0 else None
    dist.gather_object((stage_report(logger), sink.history if sink else None), gathered, dst=0, group=control)
    if rank != 0:
        return start.run_dir, None
    reports = [r for r, _ in gathered]
    history = gathered[last][1]
    return start.run_dir, finish_run(setup, start.run_dir, reports, history, time.perf_counter() - t0)

