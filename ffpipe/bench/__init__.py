"""Benchmarks that print figures; `ffpipe bench step` (bench/step.py) is the training step.

This module holds only what the command line needs (it must not import torch)."""
from __future__ import annotations

from ffpipe import config as config_mod

VARIANTS = {
    "bp": ["algo.name=bp"],
    "sff-block": ["algo.name=sff", "model.granularity=block"],
    "sff-layer": ["algo.name=sff", "model.granularity=layer"],
}
MODES = ("eager", "graphed", "compiled")


def add_parser(bench_sub) -> None:
    s = bench_sub.add_parser("step", help="img/s and peak memory of one training step: BP vs SFF")
    s.add_argument("--model", default="resnet18", choices=config_mod.MODELS)
    s.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512, 2048])
    s.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    s.add_argument("--modes", nargs="+", default=["eager", "graphed"], choices=MODES,
                   help="graphed and compiled need CUDA (skipped on CPU)")
    s.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32], metavar=("C", "H", "W"))
    s.add_argument("--classes", type=int, default=10)
    s.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    s.add_argument("--optimizer", default="adamw", choices=("sgd", "adam", "adamw"))
    s.add_argument("--steps", type=int, default=30, help="timed steps")
    s.add_argument("--warmup", type=int, default=8, help="untimed steps first (graph capture, autotuning)")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="another config key for every variant (e.g. model.head_kernel=3)")
    s.add_argument("--profile", metavar="FILE", help="append each row's top kernels (torch.profiler, "
                   "3 steps after the timed ones) to this text file")
    s.add_argument("--json", help="also write the results to this JSON file")
    _add_memory_parser(bench_sub)


def _add_memory_parser(bench_sub) -> None:
    m = bench_sub.add_parser("memory", help="largest batch on one device: BP, sequential SFF, each of S stages")
    m.add_argument("--model", default="resnet50", choices=config_mod.MODELS)
    m.add_argument("--shape", type=int, nargs=3, default=[3, 224, 224], metavar=("C", "H", "W"))
    m.add_argument("--classes", type=int, default=1000)
    m.add_argument("--granularity", default="block", choices=("block", "layer"))
    m.add_argument("--stages", type=int, default=4, help="also size each of this many SFF stages")
    m.add_argument("--runs", nargs="+", default=[], metavar="RUN",
                   help="only these: bp, sequential, stage0, stage1, ... (default: all; x BP needs bp first)")
    m.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    m.add_argument("--optimizer", default="sgd", choices=("sgd", "adam", "adamw"))
    m.add_argument("--start-batch", type=int, default=32, help="first batch tried (doubled from there)")
    m.add_argument("--max-batch", type=int, default=1 << 16, help="the search stops here")
    m.add_argument("--resolution", type=float, default=0.05, help="bisect until the gap is below this share")
    m.add_argument("--steps", type=int, default=3, help="timed steps of every trial (after its warm-up)")
    m.add_argument("--models", nargs="*", default=[], choices=config_mod.MODELS,
                   help="also: can BP and the stages train each of these at --batch?")
    m.add_argument("--batch", type=int, default=256, help="the batch of --models")
    m.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    m.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    m.add_argument("--json", help="also write the results to this JSON file")
