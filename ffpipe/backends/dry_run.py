"""`ffpipe train --dry-run`: what a run would do, without training or a run folder. The resolved
config, the stage split with each stage's predicted seconds per step, and the devices of every
stage (replica), as the configured backend would choose them.

The prediction is the one the split is balanced on: every unit's real training step timed on
its own on stage 0's device (pipeline/profile.py; on a CPU at batch 16, scaled to the run's
batch). Transfers between stages are not in it (torchrun measures the link between its ranks
when the run starts). The data is read (for its shapes and size), so a missing dataset is named.
"""
from __future__ import annotations

import os

from ffpipe import config as config_mod
from ffpipe.backends.torchrun_env import torchrun_world
from ffpipe.config import Config
from ffpipe.data import StreamSplit
from ffpipe.errors import require_installed
from ffpipe.models import dry_run as unit_shapes
from ffpipe.pipeline.partition import stage_ranges, stage_seconds
from ffpipe.pipeline.profile import measure_learner_costs, profile_batch
from ffpipe.pipeline.replicas.topology import Topology
from ffpipe.run.setup import RunSetup, choose_replicas, prepare, stage_device


def plan_run(cfg: Config) -> str:
    """The dry run's report (a TOML config, then '#' lines: TOML still, for a file to run from)."""
    world = torchrun_world(os.environ) if cfg.pipeline.backend == "torchrun" else None
    if world is not None:
        from ffpipe.backends.torchrun import resolve_stages  # as the ranks will
        cfg = resolve_stages(cfg, world)
    if cfg.pipeline.backend == "ray":
        require_installed("ray", "ray", "pipeline.backend = 'ray'")
    device = stage_device(cfg, 0)
    setup = prepare(cfg, profile_device=device)
    replicas = choose_replicas(setup, world if world is not None else _processes(cfg))
    costs = setup.costs or _unit_costs(setup, device)
    seconds = stage_seconds(costs, [0.0] * (len(costs) + 1), setup.starts, replicas, setup.loader_floor)
    lines = [config_mod.to_toml(cfg).rstrip(), "",
             f"# dry run: {setup.num_stages} stage(s) of {len(setup.learners)} units on the {cfg.pipeline.backend} "
             f"backend, {setup.plan.total_steps} steps; predicted seconds per step measured on {device} "
             f"(each unit's training step alone, batch {profile_batch(cfg, device)} scaled to "
             f"{cfg.train.batch_size}; transfers not included)", _data_line(setup)]
    topology = Topology.of(replicas or [1] * setup.num_stages)
    for k, units in enumerate(stage_ranges(setup.starts, len(setup.learners))):
        lines.append(f"# stage {k}: units {units.start}-{units.stop - 1}, predicted {seconds[k] * 1e3:.2f} ms/step"
                     f"{_per_replica(topology, k)}, on {_devices(cfg, topology, k)}")
    lines.append("# nothing was trained and no run folder was made")
    return "\n".join(lines)


def _data_line(setup: RunSetup) -> str:
    """What stage 0 will read: how many images, of what shape, and whether they are streamed."""
    info, data = setup.info, setup.data
    how = "streamed from shards batch by batch (data.stream)" if isinstance(data.train, StreamSplit) \
        else "read into memory before the first step"
    shape = " x ".join(map(str, info.in_shape))
    return (f"# data: {setup.cfg.data.name}, {info.num_train} training images of {shape} in "
            f"{info.num_classes} classes, {how}")


def _processes(cfg: Config) -> int | None:
    """Processes for pipeline.replicas = 'auto' outside torchrun: the GPUs here (Ray's are the
    cluster's, not known before it is joined); None where there is nothing to share out."""
    if cfg.pipeline.replicas != "auto":
        return None
    import torch
    return max(torch.cuda.device_count(), cfg.pipeline.stages) if cfg.train.device != "cpu" else cfg.pipeline.stages


def _unit_costs(setup: RunSetup, device) -> list[float]:
    """Measured seconds per step of every unit, where the split did not need them (one stage,
    or boundaries given)."""
    shapes = unit_shapes([learner.body for learner in setup.learners], setup.info.in_shape)
    return measure_learner_costs(setup.cfg, setup.learners, shapes, setup.info.in_shape,
                                 setup.info.num_classes, device)


def _per_replica(topology: Topology, stage: int) -> str:
    count = topology.replicas[stage]
    return f" per replica (x{count})" if count > 1 else ""


def _devices(cfg: Config, topology: Topology, stage: int) -> str:
    """Where each process of a stage would run, as the backend chooses."""
    if cfg.pipeline.backend == "local":
        return str(stage_device(cfg, stage))
    if cfg.pipeline.backend == "torchrun":
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", topology.world))  # one node unless torchrun says
        return ", ".join(f"rank {r} ({stage_device(cfg, r, r % per_node)})" for r in topology.stage_ranks(stage))
    count = topology.replicas[stage]
    gpu = " and 1 GPU (where the cluster has GPUs)" if cfg.train.device != "cpu" else ""
    return f"{count} Ray actor(s) of {cfg.pipeline.cpus_per_stage:g} CPU(s){gpu}" + (" each" if count > 1 else "")
