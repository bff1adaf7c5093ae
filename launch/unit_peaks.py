"""Peak GPU memory per sample of each unit's training step, and of a stage of several units.

Where a stage's memory goes: each unit alone (eager, its input as the previous stage would send
it), then the units together eagerly and graphed. Figures are MiB per sample over the memory
held before the step (the inputs). Needs a CUDA device.

    python3 launch/unit_peaks.py --model resnet152 --batch 4096 --units 0 12
"""
from __future__ import annotations

import argparse
import copy

import torch

from ffpipe import config as config_mod
from ffpipe.learners import build_learners
from ffpipe.models import dry_run
from ffpipe.pipeline.messages import Message, Phase
from ffpipe.pipeline.stage import Stage, StageOptions, input_dtype

SHAPE = (3, 224, 224)


def inputs(learners, shapes, first: int, batch: int, cfg, device):
    """What unit `first` receives: the images as the loader gives them, or a unit's output."""
    if first == 0:
        dtype = input_dtype(cfg.train.precision, learners[0], device) or torch.float32
        return torch.randn(batch, *SHAPE, device=device).to(dtype), ()
    shape = shapes[first - 1]

    def sent(dims):  # as a stage sends it: bf16, channels_last maps
        t = torch.randn(batch, *dims, device=device, dtype=torch.bfloat16)
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
    return sent(shape.out), tuple(sent(s) for s in shape.skips)


def peak(args, learners, shapes, first: int, last: int, graphs: str, device) -> str:
    cfg = config_mod.load(None, [*args.config, f"train.cuda_graphs={graphs}"])
    torch.cuda.empty_cache()
    stage = Stage(0, [copy.deepcopy(unit) for unit in learners[first:last]], StageOptions.of(cfg), 100, device)
    x, skips = inputs(learners, shapes, first, args.batch, cfg, device)
    msg = Message(Phase.TRAIN, 0, 0, x=x, skips=skips, y=torch.randint(0, args.classes, (args.batch,), device=device))
    stage.train_step(msg)  # optimizer state and cuDNN's choices made
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(5):  # graphed: the rest of the warm-up, the capture and replays
        stage.train_step(msg)
    torch.cuda.synchronize()
    per_sample = (torch.cuda.max_memory_allocated() - held) / args.batch / 2**20
    stage.release_graph()
    return f"| {first}-{last - 1} | {graphs} | {held / args.batch / 2**20:.2f} | {per_sample:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet152")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--units", type=int, nargs=2, default=(0, 12), metavar=("FIRST", "STOP"))
    parser.add_argument("--set", dest="overrides", action="append", default=["algo.head=pooled"])
    args = parser.parse_args()
    args.config = [f"model.name={args.model}", "train.precision=bf16", "train.optimizer=sgd",
                   f"train.batch_size={args.batch}", *args.overrides]
    device = torch.device("cuda")
    learners = build_learners(config_mod.load(None, args.config), SHAPE, args.classes)
    shapes = dry_run([learner.body for learner in learners], SHAPE)
    first, stop = args.units
    print(f"{torch.cuda.get_device_name()}, {args.model}, batch {args.batch}\n\n"
          "| units | graphs | input held (MiB/sample) | step peak over it |\n|---|---|---|---|", flush=True)
    for unit in range(first, stop):
        print(peak(args, learners, shapes, unit, unit + 1, "off", device), flush=True)
    for graphs in ("off", "on"):
        print(peak(args, learners, shapes, first, stop, graphs, device), flush=True)


if __name__ == "__main__":
    main()
