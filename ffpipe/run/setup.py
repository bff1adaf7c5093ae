"""Setting a run up: its pieces (data, learners, plan, stage split and replicas, on measured
costs), transfer from another run's bodies, and the per-process numerics every stage process
applies first. Where the run starts (a new folder, or a run folder's checkpoints): run/start.py."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ffpipe.baselines.classic_ff import input_transform
from ffpipe.config import Config
from ffpipe.data import DataBundle, DataInfo, load_data
from ffpipe.errors import ConfigError
from ffpipe.learners import build_learners
from ffpipe.models import dry_run
from ffpipe.pipeline.graphed import plan_graphs
from ffpipe.pipeline.partition import stage_ranges, stage_starts
from ffpipe.pipeline.profile import boundary_bytes, measure_learner_costs, measure_loader_cost
from ffpipe.pipeline.replicas import choice
from ffpipe.pipeline.source import InputTransform, RunPlan, make_plan
from ffpipe.pipeline.stage import input_dtype
from ffpipe.run.checkpoints import read_units, resume_step
from ffpipe.run.folder import RunFolder
from ffpipe.telemetry.sinks import chosen


@dataclass
class RunSetup:
    cfg: Config
    info: DataInfo
    data: DataBundle | None  # only where stage 0 runs: other stages never read images
    learners: list[nn.Module]
    plan: RunPlan
    starts: list[int]
    transform: InputTransform | None
    costs: list[float] | None = None  # measured seconds per step of each learner (None: not measured)
    cut_costs: list[float] | None = None  # seconds a cut before unit i adds to each stage beside it
    # seconds stage 0 takes at least: a loader decoding beside its step (measured with `costs`
    # only, so 0.0 wherever they are None)
    loader_floor: float = 0.0

    @property
    def num_stages(self) -> int:
        return len(self.starts)

    def unit_range(self, stage_id: int) -> range:
        return stage_ranges(self.starts, len(self.learners))[stage_id]


def setup_process(cfg: Config) -> None:
    """Per-process numerics: deterministic kernels on request, TF32 matmuls on GPU otherwise."""
    torch.use_deterministic_algorithms(cfg.train.deterministic)
    torch.backends.cudnn.benchmark = not cfg.train.deterministic
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def stage_device(cfg: Config, stage_id: int, local_rank: int | None = None) -> torch.device:
    """cpu, or one GPU per stage (wrapping around when there are fewer GPUs than stages)."""
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if want == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    index = stage_id if local_rank is None else local_rank
    return torch.device("cuda", index % torch.cuda.device_count())


def prepare(cfg: Config, info: DataInfo | None = None, starts: list[int] | None = None,
            profile_device: torch.device | None = None, link: float | None = None) -> RunSetup:
    """The run's pieces. With `info` (from the process that reads the data) no images are loaded.
    The stage split: `starts` if given, else the config's boundaries, else balanced by the cost
    of each learner measured on `profile_device` (equal costs without one) and of each cut at
    the measured `link` (seconds per byte between two stage processes; None: cuts cost nothing)."""
    # 'on' where graphs cannot be (no GPU, dropout), a logger not installed: say so now, before any data is read
    plan_graphs(cfg.train.cuda_graphs, stage_device(cfg, 0), dropout=cfg.model.dropout > 0,
                microbatches=cfg.train.microbatches)
    chosen(cfg.run.loggers)
    data = None
    if info is None:
        data = load_data(cfg.data, cfg.train.seed)
        info = data.info
    learners = build_learners(cfg, info.in_shape, info.num_classes)
    if cfg.train.init_from:
        load_bodies(learners, cfg)
    plan = make_plan(cfg, info.num_train, len(learners), info.num_classes)
    costs = cut_costs = None
    floor = 0.0
    if starts is None:
        costs, cut_costs, floor = measure_costs(cfg, learners, data, info, profile_device, link)
        # listed replicas shape the split; 'auto' ones are chosen with it (choose_replicas)
        starts = stage_starts(len(learners), cfg.pipeline.stages, cfg.pipeline.boundaries or None,
                              costs, cut_costs, choice.listed(cfg.pipeline), floor)
    return RunSetup(cfg, info, data, learners, plan, starts, input_transform(cfg, info.num_classes),
                    costs, cut_costs, floor)


def measure_costs(cfg: Config, learners: list[nn.Module], data: DataBundle | None, info: DataInfo,
                  device: torch.device | None, link: float | None):
    """(measured seconds per step of every learner, of every possible cut, and the least stage 0
    takes) where the split or the replicas are to be balanced by them ((None, None, 0.0)
    otherwise). Stage 0's loader adds its time to the first learner's where it works in the
    step's way (the device's own gathers and crops; nvJPEG, whose every call waits for the work
    queued on the GPU); where it decodes on CPU threads beside a GPU's step, stage 0 takes the
    longer of its units and its loader (the floor): ResNet-50 trained from nvImageCodec's CPU
    backend at its speed on synthetic images (one H100, 2026-12-05)."""
    stages, boundaries = cfg.pipeline.stages, cfg.pipeline.boundaries
    auto = choice.wants_auto(cfg.pipeline)
    if stages > 1 or auto:
        stage_starts(len(learners), stages)  # too many stages: say so before profiling
    if device is None or not (auto or (stages > 1 and len(learners) > stages and not boundaries)):
        return None, None, 0.0
    shapes = dry_run([learner.body for learner in learners], info.in_shape)  # once, for both
    costs = measure_learner_costs(cfg, learners, shapes, info.in_shape, info.num_classes, device)
    floor = 0.0
    if data is not None:
        loader_s, beside = measure_loader_cost(cfg, data, device, input_dtype(cfg.train.precision, learners[0], device))
        if beside:
            floor = loader_s
        else:
            costs[0] += loader_s
    crossing = boundary_bytes(cfg, shapes, device)
    cut_costs = [0.0, *((link or 0.0) * b for b in crossing[:-1]), 0.0]
    return costs, cut_costs, floor


def choose_replicas(setup: RunSetup, processes: int | None) -> tuple[int, ...]:
    """Replicas per stage (pipeline/replicas/choice.py); for 'auto' on measured costs the split
    is balanced again together with them: setup.starts changes."""
    setup.starts, replicas = choice.choose_replicas(setup.cfg.pipeline, setup.starts, len(setup.learners),
                                                    processes, setup.costs, setup.cut_costs, setup.loader_floor)
    return replicas


def load_bodies(learners: list[nn.Module], cfg: Config) -> None:
    """Transfer: the unit bodies of the run in `train.init_from` (its newest checkpoints); heads
    and the BP classifier keep their fresh initialisation, for the new task."""
    source = RunFolder.open(cfg.train.init_from, "a run folder (train.init_from)")
    theirs = source.config()
    for key in ("name", "granularity", "width", "depth"):
        if getattr(theirs.model, key) != getattr(cfg.model, key):
            raise ConfigError(f"train.init_from: that run's model.{key} is {getattr(theirs.model, key)!r}, "
                              f"this run's {getattr(cfg.model, key)!r}; they must be the same model")
    if (theirs.algo.name == "bp") != (cfg.algo.name == "bp"):
        raise ConfigError("train.init_from: BP bodies transfer to BP runs and unit bodies to SFF/FF runs")
    step = resume_step(source, len(learners))
    if step is None:
        raise ConfigError(f"train.init_from = {source} has no complete checkpoint whose files are whole")
    for unit, state in read_units(source, step, range(len(learners))).items():
        body = {name[len("body."):]: t for name, t in state["learner"].items() if name.startswith("body.")}
        learners[unit].body.load_state_dict(body)
