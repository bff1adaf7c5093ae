"""The peers of ffpipe on N devices: the same BP network as ffpipe's BP baseline, trained with
DDP (plain; ddp-ckpt: with activation checkpointing around every unit; ddp-accum: each rank's
share of the batch in M gradient-accumulation steps) or with torch.distributed.pipelining (GPipe,
1F1B, interleaved 1F1B, the zero-bubble schedules interleaved and ZBV), on the config's model,
data, global batch, precision and optimizer. Run under torchrun, one process per device:

    python -m torch.distributed.run --standalone --nproc-per-node=N -m ffpipe.bench.peers \
        {ddp,ddp-ckpt,ddp-accum,gpipe,1f1b,interleaved-1f1b,zb-interleaved,zbv} --config FILE.toml \
        [--microbatches M] [--warmup 10] [--steps 50] --out FILE.json [--set section.key=value ...]

Each rank trains `--warmup` untimed steps, then `--steps` timed ones between two device syncs
and barriers; rank 0 writes images/s (global), every rank's peak memory, the final loss, N,
microbatches and the batch to --out. Runs on CPU too (gloo), for the tests.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from ffpipe import config as config_mod
from ffpipe.bench.pipelining import (SCHEDULES, RankStages, StageModule, build_schedule, local_stage_ids,
                                     pipelined_forward_backward, split_units)
from ffpipe.config import Config
from ffpipe.data import DataBundle, load_data, training_loader
from ffpipe.errors import ConfigError
from ffpipe.ff.optim import build_optimizer, lr_at, set_lr
from ffpipe.learners import build_learners
from ffpipe.telemetry.measure import peak_memory_mib
from ffpipe.pipeline.stage import autocast_dtype
from ffpipe.pipeline.sync import synchronize

PEERS = ("ddp", "ddp-ckpt", "ddp-accum", *SCHEDULES)  # ckpt: activation checkpointing; accum: gradient accumulation


@dataclass
class Peer:
    """What the timed loop drives: a step's forward and backward, then the optimizer."""
    module: nn.Module                 # this rank's parameters (the DDP replica or its stage)
    optimizer: torch.optim.Optimizer
    forward_backward: Callable[[torch.Tensor | None, torch.Tensor | None], torch.Tensor | None]
    needs_data: bool                  # False: a middle pipeline stage, fed by its neighbour
    stage_starts: list[int] | None = None


def load_config(path: str | None, overrides: list[str]) -> Config:
    """The config with BP as the algorithm: every peer trains ffpipe's BP network."""
    return config_mod.load(path, [*overrides, "algo.name=bp"])


def rank_device(cfg: Config) -> torch.device:
    """cuda:<local rank> where there are GPUs (and train.device allows), else the CPU."""
    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank, world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if world > torch.cuda.device_count():
        raise ConfigError(f"{world} processes per node but this machine has {torch.cuda.device_count()} "
                          "GPUs: run with --nproc-per-node at most that (or train.device=cpu)")
    return torch.device("cuda", local_rank)


def train_batches(cfg: Config, data: DataBundle, device: torch.device) -> Iterator:
    """Endless (x, y) global batches on `device` as ffpipe's training source draws them (same
    seed, order and augmentation)."""
    if len(data.train) < cfg.train.batch_size:  # else not one full batch: an endless loop below
        raise ConfigError(f"train.batch_size = {cfg.train.batch_size} is more than the {len(data.train)} "
                          "training images (data.synthetic_train for synthetic data)")
    loader = training_loader(data, cfg.data, cfg.train.batch_size, cfg.train.seed, device)
    epoch = 0
    while True:
        yield from loader.batches(epoch)
        epoch += 1


def build_ddp(cfg: Config, in_shape, num_classes: int, device: torch.device, checkpointing: bool = False,
              accumulation: int = 1) -> Peer:
    """BPNetwork replicated on every rank; each rank trains on its 1/N of every global batch, in
    `accumulation` equal slices (DDP averages the gradients once, after the last), with every
    unit's activations recomputed in the backward where `checkpointing`."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if cfg.train.batch_size % (world * accumulation):
        raise ConfigError(f"train.batch_size = {cfg.train.batch_size} does not split evenly over {world} ranks "
                          f"x {accumulation} accumulation steps")
    network = _on_device(build_learners(cfg, in_shape, num_classes)[0], cfg, device)
    if checkpointing:
        checkpoint_units(network)
    device_ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(network, device_ids=device_ids, gradient_as_bucket_view=True)
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    channels_last = _channels_last(cfg, device)

    def forward_backward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.tensor_split(world)[rank], y.tensor_split(world)[rank]  # this rank's shard
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        losses = []
        for k, (x_k, y_k) in enumerate(zip(x.tensor_split(accumulation), y.tensor_split(accumulation))):
            # DDP all-reduces in the last slice's backward only; no_sync accumulates locally before it
            with ddp.no_sync() if k < accumulation - 1 else contextlib.nullcontext():
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = ddp(x_k, (), y_k).loss
                (loss / accumulation).backward()  # the mean over the slices: the shard's mean gradient
            losses.append(loss.detach())
        return torch.stack(losses).mean()

    return Peer(network, _optimizer(network, cfg, device), forward_backward, needs_data=True)


def checkpoint_units(network: nn.Module) -> None:
    """Activation checkpointing around each unit of `network.body`: its forward keeps only its
    inputs, and the backward runs it again. The unit's forward is replaced in place rather than
    wrapped in a module, so the parameter and state-dict names stay BPNetwork's. (Batch norm's
    running statistics are updated again by the recomputation; the gradients are exact.)"""
    for unit in network.body:
        unit.forward = functools.partial(checkpoint, unit.forward, use_reentrant=False)


def build_pipelined(schedule_name: str, cfg: Config, in_shape, num_classes: int, device: torch.device,
                    microbatches: int) -> Peer:
    """This rank's stages of BPNetwork's units (contiguous runs of units) under the schedule."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if cfg.train.batch_size % microbatches:
        raise ConfigError(f"train.batch_size = {cfg.train.batch_size} does not split into "
                          f"{microbatches} equal microbatches")
    network = build_learners(cfg, in_shape, num_classes)[0]
    stage_ids = local_stage_ids(schedule_name, rank, world)
    num_stages = world * len(stage_ids)
    starts = split_units(list(network.body), in_shape, num_stages)
    stops = [*starts[1:], len(network.body)]
    amp_dtype, channels_last = autocast_dtype(cfg.train.precision, device), _channels_last(cfg, device)
    modules = [_on_device(StageModule(network, starts[i], stops[i], i == num_stages - 1, amp_dtype, channels_last),
                          cfg, device) for i in stage_ids]
    schedule = build_schedule(schedule_name, modules, stage_ids, num_stages, device, microbatches)
    first, last = 0 in stage_ids, num_stages - 1 in stage_ids
    module = RankStages(modules)
    return Peer(module, _optimizer(module, cfg, device), pipelined_forward_backward(schedule, first, last),
                needs_data=first or last, stage_starts=starts)


def _channels_last(cfg: Config, device: torch.device) -> bool:
    return device.type == "cuda" and cfg.train.channels_last


def _on_device(module: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    module = module.to(device)
    if _channels_last(cfg, device):
        module = module.to(memory_format=torch.channels_last)
    return module


def _optimizer(module: nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    """ffpipe's optimizer (fused on CUDA, foreach on CPU), one group as a Stage has."""
    return build_optimizer([{"params": list(module.parameters())}], cfg.train, device)


def time_steps(peer: Peer, batches: Iterator, cfg: Config, warmup: int, steps: int,
               device: torch.device) -> tuple[float, torch.Tensor | None]:
    """Seconds of the `steps` timed steps after `warmup` untimed ones, and the last step's loss
    (None where this rank computes none). ffpipe's lr schedule over warmup + steps steps."""
    loss = None
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)  # note: a CPU-GPU sync point, before the clock starts
            dist.barrier()
            start = time.perf_counter()
        x, y = next(batches) if peer.needs_data else (None, None)
        set_lr(peer.optimizer, lr_at(i, warmup + steps, cfg.train))
        loss = peer.forward_backward(x, y)
        peer.optimizer.step()
        peer.optimizer.zero_grad(set_to_none=True)
    synchronize(device)  # note: a CPU-GPU sync point, before the clock stops
    dist.barrier()
    return time.perf_counter() - start, loss


def parameter_digest(module: nn.Module) -> str:
    """sha256 of every parameter's bytes: equal on two ranks only if the values are identical."""
    digest = hashlib.sha256()
    for p in module.parameters():
        digest.update(p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def gather_result(args, cfg: Config, peer: Peer, seconds: float, loss: torch.Tensor | None,
                  device: torch.device) -> dict | None:
    """Every rank's figures gathered; the result on rank 0, None elsewhere."""
    mine = {"seconds": seconds, "peak_memory_mib": peak_memory_mib(device),
            "loss": None if loss is None else loss.item(),  # note: a CPU-GPU sync point (once)
            "param_digest": parameter_digest(peer.module)}
    ranks: list[dict] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(ranks, mine)
    if dist.get_rank() != 0:
        return None
    losses = [r["loss"] for r in ranks if r["loss"] is not None]
    seconds = max(r["seconds"] for r in ranks)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"peer": args.peer, "world_size": len(ranks), "microbatches": args.microbatches,
            "batch": cfg.train.batch_size, "model": cfg.model.name, "granularity": cfg.model.granularity,
            "precision": "bf16" if autocast_dtype(cfg.train.precision, device) else "fp32",
            "warmup": args.warmup, "steps": args.steps, "seconds": seconds,
            "images_per_second": cfg.train.batch_size * args.steps / seconds,
            "peak_memory_mib": [r["peak_memory_mib"] for r in ranks],
            "loss": sum(losses) / len(losses), "param_digests": [r["param_digest"] for r in ranks],
            "stage_starts": peer.stage_starts, "device": card, "torch": torch.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def run_peer(args) -> dict | None:
    cfg = load_config(args.config, args.overrides)
    device = rank_device(cfg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    try:
        data = load_data(cfg.data, cfg.train.seed)
        in_shape, num_classes = tuple(data.train.shape), len(data.train.classes)
        if args.peer.startswith("ddp"):
            peer = build_ddp(cfg, in_shape, num_classes, device, checkpointing=args.peer == "ddp-ckpt",
                             accumulation=args.microbatches)
        else:
            peer = build_pipelined(args.peer, cfg, in_shape, num_classes, device, args.microbatches)
        batches = train_batches(cfg, data, device) if peer.needs_data else None
        seconds, loss = time_steps(peer, batches, cfg, args.warmup, args.steps, device)
        if args.save_state:
            torch.save(peer.module.state_dict(), f"{args.save_state}.rank{dist.get_rank()}.pt")
        return gather_result(args, cfg, peer, seconds, loss, device)
    finally:
        dist.destroy_process_group()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ffpipe.bench.peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("peer", choices=PEERS)
    p.add_argument("--config", help="TOML config (default: ffpipe's defaults)")
    p.add_argument("--microbatches", type=int, default=1, help="the schedules: microbatches per batch; "
                   "ddp-accum: accumulation steps per rank")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--out", required=True, help="JSON file rank 0 writes")
    p.add_argument("--save-state", metavar="PREFIX", help="each rank saves its module's state dict "
                   "after the last step to PREFIX.rank<r>.pt (for the tests)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = p.parse_args(argv)
    if args.peer in ("ddp", "ddp-ckpt"):
        args.microbatches = 1
    if args.microbatches < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--microbatches and --steps must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_peer(args)
    if result is not None:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: result[k] for k in ("peer", "world_size", "microbatches", "images_per_second",
                                                 "loss")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
