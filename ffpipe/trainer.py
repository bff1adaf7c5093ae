"""What every backend shares: building a run's pieces, one stage's part of it, and its summary.

A backend starts processes (or threads), and in each calls `build_stage` and `run_stage_loop`;
the coordinator then calls `finish_run` with every stage's report and the last stage's results.
"""
from __future__ import annotations

import datetime
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ffpipe.config import Config
from ffpipe.data import DataBundle, DataInfo, DeviceLoader, check_model_input, load_data
from ffpipe.errors import ConfigError
from ffpipe.learners import InputTransform, build_learners, input_transform
from ffpipe.models import UnitShape, dry_run
from ffpipe.pipeline.partition import stage_ranges, stage_starts
from ffpipe.pipeline.profile import measure_learner_costs
from ffpipe.pipeline.runtime import StageLogger
from ffpipe.pipeline.source import DataSource, RunPlan, make_plan
from ffpipe.pipeline.stage import Stage, use_cuda_graphs
from ffpipe.plots import plot_run
from ffpipe.run import merge_metrics, test_rows, write_summary


@dataclass
class RunSetup:
    cfg: Config
    info: DataInfo
    data: DataBundle | None  # only where stage 0 runs: other stages never read images
    learners: list[nn.Module]
    plan: RunPlan
    starts: list[int]
    transform: InputTransform | None

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


def prepare(cfg: Config, info: DataInfo | None = None, starts: list[int] | None = None,
            profile_device: torch.device | None = None) -> RunSetup:
    """The run's pieces. With `info` (from the process that reads the data) no images are loaded.
    The stage split: `starts` if given, else the config's boundaries, else balanced by the cost
    of each learner measured on `profile_device` (equal costs without one)."""
    use_cuda_graphs(cfg.train.cuda_graphs, stage_device(cfg, 0))  # 'on' without a GPU: say so now
    data = None
    if info is None:
        data = load_data(cfg.data, cfg.train.seed)
        info = data.info
    learners = build_learners(cfg, info.in_shape, info.num_classes)
    plan = make_plan(cfg, info.num_train, len(learners), info.num_classes)
    if starts is None:
        starts = choose_starts(cfg, learners, info, profile_device)
    return RunSetup(cfg, info, data, learners, plan, starts, input_transform(cfg, info.num_classes))


def choose_starts(cfg: Config, learners: list[nn.Module], info: DataInfo,
                  profile_device: torch.device | None) -> list[int]:
    stages, boundaries = cfg.pipeline.stages, cfg.pipeline.boundaries or None
    costs = None
    if stages > 1 and not boundaries and profile_device is not None and len(learners) > stages:
        stage_starts(len(learners), stages)  # too many stages: say so before profiling
        costs = measure_learner_costs(cfg, learners, info.in_shape, info.num_classes, profile_device)
    return stage_starts(len(learners), stages, boundaries, costs)


def stage_device(cfg: Config, stage_id: int, local_rank: int | None = None) -> torch.device:
    """cpu, or one GPU per stage (wrapping around when there are fewer GPUs than stages)."""
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if want == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    index = stage_id if local_rank is None else local_rank
    return torch.device("cuda", index % torch.cuda.device_count())


def stage_input_shape(setup: RunSetup, stage_id: int) -> UnitShape | None:
    """Per-sample shapes of what stage `stage_id` receives from the stage before it."""
    first = setup.unit_range(stage_id).start
    if first == 0:
        return None
    bodies = [learner.body for learner in setup.learners[:first]]
    return dry_run(bodies, setup.info.in_shape)[-1]


def build_stage(setup: RunSetup, stage_id: int, device: torch.device) -> Stage:
    r = setup.unit_range(stage_id)
    return Stage(stage_id, setup.learners[r.start:r.stop], setup.cfg, setup.plan.total_steps, device,
                 expect=stage_input_shape(setup, stage_id))


def make_source(setup: RunSetup, device: torch.device, start_step: int = 0,
                eval_only: bool = False) -> DataSource:
    if setup.data is None:
        raise RuntimeError("make_source needs the data: call it where stage 0 runs")
    cfg, data = setup.cfg, setup.data
    for split, images in (("training", data.train), ("test", data.test)):
        check_model_input(images, setup.info.in_shape, split)
    limit = cfg.data.on_device_max_mib
    train = DeviceLoader(data.train, cfg.train.batch_size, device, data.mean, data.std, train=True,
                         seed=cfg.train.seed, augment=cfg.data.augment, flip=data.flip,
                         max_device_mib=limit)
    test = DeviceLoader(data.test, cfg.train.eval_batch_size, device, data.mean, data.std, train=False,
                        max_device_mib=limit)
    return DataSource(setup.plan, train, test, setup.transform, start_step, eval_only,
                      cfg.run.stop_after_step, cfg.train.eval_every)


def stage_report(logger: StageLogger) -> dict:
    """What a stage hands the coordinator at the end (its rows are in its own metrics file)."""
    stage = logger.stage
    return {"stage": stage.stage_id, "units": stage.unit_ids, "device": str(stage.device), "step": stage.step,
            "train_images": logger.train_images, "train_seconds": logger.train_seconds,
            **steady_profile(logger.rows),
            "images_per_second": logger.train_images / max(logger.train_seconds, 1e-9),
            "wait_recv_s": logger.wait_recv.total, "wait_send_s": logger.wait_send.total,
            "peak_memory_mib": max([r["peak_memory_mib"] for r in logger.rows], default=0.0)}


def steady_profile(rows: list[dict], skip_fraction: float = 0.25) -> dict:
    """A stage in steady state: medians over its logged windows after the first quarter of the
    steps (warm-up: cuDNN autotuning, allocator growth, pipeline fill) of images/s and of the
    share of each window spent waiting on the previous stage, on the next one, and working."""
    by_step = {r["step"]: r for r in rows if r["phase"] == "train"}  # one row per unit: same values
    steps = sorted(by_step)
    windows = []
    for a, b in zip(steps, steps[1:]):
        span = by_step[b]["wall_s"] - by_step[a]["wall_s"]
        if b > steps[-1] * skip_fraction and span > 0:
            recv = (by_step[b]["wait_recv_s"] - by_step[a]["wait_recv_s"]) / span
            send = (by_step[b]["wait_send_s"] - by_step[a]["wait_send_s"]) / span
            windows.append((by_step[b]["images_per_s"], recv, send))
    if not windows:
        return {"images_per_second_steady": None, "share_waiting_recv": None,
                "share_waiting_send": None, "share_busy": None}
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    recv, send = median([w[1] for w in windows]), median([w[2] for w in windows])
    return {"images_per_second_steady": median([w[0] for w in windows]), "share_waiting_recv": recv,
            "share_waiting_send": send, "share_busy": max(0.0, 1.0 - recv - send)}


def finish_run(setup: RunSetup, run_dir: Path, reports: list[dict], history: list[dict],
               wall_seconds: float) -> dict:
    cfg = setup.cfg
    rows = merge_metrics(run_dir, setup.num_stages, test_rows(history))
    final = history[-1] if history else {}
    last = reports[-1]
    steps_done = min(r["step"] for r in reports)
    summary = {
        "completed": steps_done >= setup.plan.total_steps,
        "test_accuracy": final.get("test_accuracy"),
        "test_accuracy_last": final.get("test_accuracy_last"),
        "test_accuracy_per_unit": final.get("test_accuracy_per_unit", []),
        "test_accuracy_best_unit": max(final.get("test_accuracy_per_unit", [0.0])),
        # The pipeline's pace is its last stage's: training images through it per training second.
        "images_per_second": last["images_per_second"],
        "images_per_second_steady": last["images_per_second_steady"],
        "peak_memory_mib": max(r["peak_memory_mib"] for r in reports),
        "wall_seconds": wall_seconds,
        "steps": steps_done, "total_steps": setup.plan.total_steps, "epochs": setup.plan.epochs,
        "algo": cfg.algo.name, "model": cfg.model.name, "granularity": cfg.model.granularity,
        "dataset": cfg.data.name, "train_images": setup.info.num_train,
        "backend": cfg.pipeline.backend, "num_stages": setup.num_stages, "stages": reports,
        "device": _device_name(reports[0]["device"]), "torch": torch.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": command_line(),
        "history": history,
    }
    write_summary(run_dir, summary)
    if cfg.run.plots:
        plot_run(rows, Path(run_dir) / "plots")
    return summary


def command_line() -> str:
    """How this run was started, as a user would type it."""
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    if sys.argv[0].endswith(("ffpipe/__main__.py", "/ffpipe", "ffpipe")):
        return f"ffpipe {args}"
    return f"{Path(sys.argv[0]).name} {args}"


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"
