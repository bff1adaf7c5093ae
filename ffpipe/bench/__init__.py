"""Benchmarks that print figures (images/s, peak memory, ratios to a baseline of the same run):

  step.py        `ffpipe bench step`: BP's and SFF's training step on one device
  memory.py      `ffpipe bench memory`: the largest batch BP, the sequential trainer and each
                 stage train on one device
  data.py        `ffpipe bench data`: how fast each source feeds stage 0
  stream.py      `ffpipe bench stream`: the streamed source (shards, decode, crops) on its own
                 or beside a busy device (device_load.py)
  pipeline.py    `ffpipe bench pipeline`: every backend beside BP and its peers on N GPUs
  logging_cost.py  `ffpipe bench logging`: images/s with and without the live loggers
  early_exit.py  `ffpipe bench early-exit`: accuracy against FLOPs per image as units answer early
  peers.py, pipelining.py   the peers (DDP, torch.distributed.pipelining) run under torchrun
  head_kernels.py  `python -m ffpipe.bench.head_kernels`: the pooled head's kernels against the
                 plain path, per map shape
  decoders.py    `python -m ffpipe.bench.decoders`: the stream's GPU decoder taken apart (each
                 JPEG library, the crop kernel), alone or beside a busy device

This module holds only what the command line needs (it must not import torch)."""
from __future__ import annotations

import argparse

from ffpipe import config as config_mod
from ffpipe.config_data import JPEG_DECODERS

VARIANTS = {
    "bp": ["algo.name=bp"],
    "sff-block": ["algo.name=sff", "model.granularity=block"],
    "sff-layer": ["algo.name=sff", "model.granularity=layer"],
}
MODES = ("eager", "graphed", "compiled")
MICROBATCHES = (2, 4, 8)  # what bench pipeline tries for the schedules and DDP's accumulation steps
# torch.distributed.pipelining's schedules bench pipeline runs (pipelining.py: their classes; it
# runs those the installed torch has)
SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b", "zb-interleaved", "zbv")


def add_parsers(bench_sub) -> None:
    """`ffpipe bench step | memory | data | pipeline`."""
    _add_step_parser(bench_sub)
    _add_memory_parser(bench_sub)
    _add_data_parser(bench_sub)
    _add_stream_parser(bench_sub)
    _add_pipeline_parser(bench_sub)
    _add_logging_parser(bench_sub)
    _add_early_exit_parser(bench_sub)


def _add_step_parser(bench_sub) -> None:
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


def _add_data_parser(bench_sub) -> None:
    d = bench_sub.add_parser("data", help="images/s of each source through the loader")
    d.add_argument("--dataset", action="append", choices=config_mod.DATASETS,
                   help="repeatable; default: every built-in dataset found on this machine")
    d.add_argument("--root", default="", help="data.root for the datasets named")
    d.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto = cuda when a GPU is visible")
    d.add_argument("--batch-size", type=int, default=512)
    d.add_argument("--seconds", type=float, default=3.0, help="time spent batching per source")
    d.add_argument("--placement", default="auto", choices=("auto", "device", "host"),
                   help="where the uint8 images live: by data.on_device_max_mib, or forced")
    d.add_argument("--via-parquet", action="store_true",
                   help="also measure each dataset through Parquet shards in a temporary folder")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE")
    d.add_argument("--json", help="also write the results to this JSON file")


def _add_stream_parser(bench_sub) -> None:
    s = bench_sub.add_parser("stream", help="images/s of the streamed source: shards to augmented batches")
    s.add_argument("--root", required=True, help="shards of `ffpipe data prepare` (or, with --make, "
                   "where to write an ImageNet-like set: ROOT/images and ROOT/shards)")
    s.add_argument("--make", type=int, default=0, metavar="N", help="first write N ImageNet-like JPEGs")
    s.add_argument("--classes", type=int, default=100, help="classes of --make")
    s.add_argument("--decode", nargs="+", choices=("gpu", "cpu"), help="default: gpu and cpu on a GPU")
    s.add_argument("--jpeg-decoder", nargs="+", default=["auto"], choices=JPEG_DECODERS,
                   help="the gpu rows' JPEG libraries (data.jpeg_decoder), a row each")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--image-size", type=int, default=224)
    s.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"), help="of the batches")
    s.add_argument("--threads", type=int, default=0, help="data.decode_threads (0 = every core)")
    s.add_argument("--window", type=int, default=8192, help="data.shuffle_window")
    s.add_argument("--workers", type=int, nargs="+", default=[0],
                   help="batches made at once, one row each (0 = the loader's choice)")
    s.add_argument("--seconds", type=float, default=15.0, help="time measured per row")
    s.add_argument("--load", nargs="+", default=["none"], choices=("none", "default", "side", "blocking"),
                   help="keep the device busy meanwhile with matrix products on its default stream "
                        "(where a stage trains), a non-blocking or a blocking stream of their own "
                        "(bench/device_load.py)")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s.add_argument("--json", help="also write the results to this JSON file")


def _add_pipeline_parser(bench_sub) -> None:
    p = bench_sub.add_parser("pipeline", help="every backend beside BP, DDP and torch's pipeline schedules")
    p.add_argument("--config", default="configs/bench_resnet18.toml", help="TOML config of every run")
    p.add_argument("--stages", type=int, nargs="+", default=[2, 4])
    p.add_argument("--ray", action="store_true", help="also run the Ray backend (needs ray)")
    p.add_argument("--replicas", nargs="*", default=[], metavar="SxR|R0,R1,..|Sxauto",
                   help="also SFF under torchrun with stage replicas, e.g. 2x2 (2 stages x 2 replicas), "
                        "3xauto (3 stages, replicas and split balanced together over --gpus)")
    p.add_argument("--microbatches", type=int, nargs="+", default=list(MICROBATCHES),
                   help="microbatch counts tried for the schedules and accumulation steps for DDP's "
                        "(the best is reported)")
    p.add_argument("--gpus", type=int, help="GPUs of the DDP and pipelining peers (default: the largest of --stages)")
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                   help="run the DDP peers and torch's schedules (--no-peers: skip them)")
    p.add_argument("--model", choices=config_mod.MODELS, help="instead of the config's model")
    p.add_argument("--shape", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="synthetic images of this shape instead of the config's data")
    p.add_argument("--classes", type=int, help="synthetic data with this many classes instead of the config's data")
    p.add_argument("--max-batch", type=int, default=0, metavar="CAP", help="also find each row's largest "
                   "global batch up to CAP (doubling from train.batch_size, then bisection; 0: not)")
    p.add_argument("--resolution", type=float, default=0.05, help="--max-batch: bisect until the gap is below "
                   "this share")
    p.add_argument("--peer-steps", type=int, default=50, help="timed steps of each peer run")
    p.add_argument("--peer-warmup", type=int, default=10, help="untimed steps before them")
    p.add_argument("--timeout-s", type=float, default=900, help="a run taking longer is stopped and marked failed")
    p.add_argument("--out", default="runs/bench", help="folder of the table, summaries and logs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")


def _add_logging_parser(bench_sub) -> None:
    g = bench_sub.add_parser("logging", help="img/s of one run without and with the live loggers")
    g.add_argument("--config", default="configs/quickstart.toml", help="TOML config of every run")
    g.add_argument("--loggers", nargs="+", default=["none", "tensorboard", "all"],
                   choices=("none", "tensorboard", "all"), help="all = tensorboard, wandb and mlflow")
    g.add_argument("--rounds", type=int, default=3, help="each choice runs once per round")
    g.add_argument("--nproc", type=int, default=0, help="under torchrun with this many processes (0: not)")
    g.add_argument("--timeout-s", type=float, default=1800, help="a run taking longer stops the bench")
    g.add_argument("--out", default="runs/bench-logging", help="folder of the table and the runs")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")


def _add_early_exit_parser(bench_sub) -> None:
    e = bench_sub.add_parser("early-exit", help="test accuracy against FLOPs per image as units answer early")
    e.add_argument("run_dirs", nargs="+", metavar="RUN", help="trained run folders (their test split is read)")
    e.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99,
                                                                      0.995, 0.999], help="min_confidence values")
    e.add_argument("--device", default="auto", help="auto = cuda when a GPU is visible")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                   help="the runs' data keys here (e.g. data.root=DIR)")
    e.add_argument("--json", help="also write every curve to this JSON file")
    e.add_argument("--plot", help="and plot accuracy against FLOPs into this PNG")
