"""The run folder: the one place that knows where a run keeps what.

    <run>/config.toml              the resolved config (ffpipe train --config <run>/config.toml repeats it)
    <run>/plan.json                the run's steps (total, per epoch) and its number of units
    <run>/data.json                what using the model needs of the data: input shape, class names,
                                   normalisation (load_run and ffpipe predict read no training data)
    <run>/partition.json           the layout: the first unit of every stage, the replicas, and
                                   every earlier layout of the run ("history", from which step)
    <run>/checkpoints/             step-<n>-units-<a>-<b>.pt: units a..b after n steps (run/checkpoints.py)
    <run>/metrics/stage-<k>.parquet  each stage's metric rows; merged into <run>/metrics.parquet
    <run>/history.jsonl            every evaluation, written as it happens
    <run>/failures.jsonl           every stage failure of the run (what automatic restarts read)
    <run>/summary.json, <run>/eval.json, <run>/plots/
    <run>/tensorboard/, wandb/, mlruns/  live metrics (run.loggers); <run>/flight/ stack dumps of stalls

<run> is a local folder (run.dir, else runs/<timestamp>) or, with run.storage, a folder of any
filesystem pyarrow opens (run/store.py): <run.storage>/<run.dir or timestamp>. A RunFolder is a
small value (its location): it travels to every stage process, which opens the store itself.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ffpipe import config as config_mod
from ffpipe.config import Config
from ffpipe.errors import ConfigError, FFPipeError
from ffpipe.run.store import Store, is_temporary, is_uri, join

# What may change when a run is resumed: nothing that changes the arithmetic or where the run is.
# The layout may (checkpoints are keyed by unit: every layout learns the same).
RESUMABLE_SECTIONS = ("run.",)
FIXED_RUN_KEYS = {"run.dir", "run.storage"}
RESUMABLE_KEYS = {"pipeline.timeout_s", "pipeline.queue_depth", "pipeline.backend", "pipeline.transport",
                  "pipeline.stages", "pipeline.boundaries", "pipeline.elastic",
                  "pipeline.ray_tensor_transport", "pipeline.address", "pipeline.placement",
                  "pipeline.cpus_per_stage", "pipeline.max_restarts", "pipeline.replicas", "pipeline.dashboard",
                  "train.log_every"}


@dataclass(frozen=True)
class RunFolder:
    location: str  # a local path or a storage URI

    def __post_init__(self):
        object.__setattr__(self, "location", str(self.location))

    @property
    def store(self) -> Store:
        return Store(self.location)

    @property
    def path(self) -> Path | str:
        """The folder as a user names it: a local Path, or the storage URI."""
        return self.location if is_uri(self.location) else Path(self.location)

    # -- making and opening ----------------------------------------------------------------
    @classmethod
    def create(cls, cfg: Config) -> "RunFolder":
        """A new folder for this run; refuses one that already holds a run (nothing is overwritten)."""
        folder = cls(run_location(cfg) or run_location(cfg, new_run_dir(cfg)))
        if folder.exists():
            raise FFPipeError(f"run folder {folder} already holds a run; choose another run.dir, "
                              f"or continue it with: ffpipe train --resume {folder}")
        folder.store.write_text("config.toml", config_mod.to_toml(cfg))
        return folder

    @classmethod
    def open(cls, location: str | Path, what: str = "a run folder") -> "RunFolder":
        folder = cls(location)
        if not folder.exists():
            raise FFPipeError(f"{location} is not {what} (no config.toml); pass a folder made by ffpipe train "
                              "(a local path, or the storage URI the run printed)")
        return folder

    def exists(self) -> bool:
        """Whether a run has been started here (its config is written first)."""
        return self.store.exists("config.toml")

    def config(self, overrides: list[str] = ()) -> Config:
        return config_mod.from_dict(config_mod.merge(config_mod.parse_toml(self.store.read_text("config.toml")),
                                                     list(overrides)))

    def resume_config(self, overrides: list[str]) -> Config:
        """The run's own config with the few keys that may change on resume. A stop point saved
        with the run stopped it once and is dropped (pass run.stop_after_step again to stop)."""
        for text in overrides:
            key = text.split("=", 1)[0].strip()
            if key in FIXED_RUN_KEYS or not (key in RESUMABLE_KEYS or key.startswith(RESUMABLE_SECTIONS)):
                raise ConfigError(f"'{key}' cannot change when a run is resumed (it would change what "
                                  "the checkpoints mean, or where they are); keys that can: run.* but "
                                  f"{', '.join(sorted(FIXED_RUN_KEYS))}, {', '.join(sorted(RESUMABLE_KEYS))}")
        cfg = self.config(overrides)
        if not any(o.strip().startswith("run.stop_after_step") for o in overrides):
            cfg.run.stop_after_step = 0
        return cfg

    def __str__(self) -> str:
        return self.location

    def sweep_temporaries(self) -> list[str]:
        """Delete what writers killed midway left (`<name>.tmp-<hex>`: store.py writes there first);
        only while no process of the run is writing. Returns the names deleted."""
        gone = []
        for folder in ("", "checkpoints", "metrics", "plots"):
            for name in self.store.list(folder):
                if is_temporary(name):
                    gone.append(f"{folder}/{name}" if folder else name)
                    self.store.delete(gone[-1])
        return gone

    def forget_unstarted(self) -> None:
        """A new run that failed before any stage started (e.g. no Ray cluster to join): its
        config and layout go, so the same run.dir can be used again. Never a run that trained."""
        if not self.store.list("checkpoints") and not self.store.list("metrics") and not self.store.exists("history.jsonl"):
            for name in ("plan.json", "partition.json", "config.toml"):
                self.store.delete(name)

    # -- the layout: stage split and replicas ---------------------------------------------------
    def write_partition(self, starts: list[int], replicas=(), step: int = 0) -> None:
        """The layout from `step` on; partition.json keeps every earlier one under "history"."""
        history = self._partition().get("history", []) if self.store.exists("partition.json") else []
        layout = {"starts": list(starts), "replicas": list(replicas or [1] * len(starts))}
        history.append({"step": step, **layout})
        self.store.write_text("partition.json", json.dumps({**layout, "history": history}) + "\n")

    def partition(self) -> list[int]:
        """The stage split: the first unit of every stage."""
        return self._partition()["starts"]

    def layout(self) -> dict:
        """{"starts", "replicas", "history"}: the run's layout now (replicas: one each by default)."""
        saved = self._partition()
        return {**saved, "replicas": saved.get("replicas") or [1] * len(saved["starts"]),
                "history": saved.get("history") or [{"step": 0, "starts": saved["starts"]}]}

    def _partition(self) -> dict:
        if not self.store.exists("partition.json"):
            raise FFPipeError(f"{self} has no partition.json: the run stopped before its stages "
                              "were chosen; start it again instead of resuming it")
        return json.loads(self.store.read_text("partition.json"))

    def write_plan(self, total_steps: int, steps_per_epoch: int, num_units: int) -> None:
        """What the run will do (plan.json): read by `ffpipe status` for the time left."""
        plan = {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch, "num_units": num_units}
        self.store.write_text("plan.json", json.dumps(plan) + "\n")

    def plan(self) -> dict | None:
        return json.loads(self.store.read_text("plan.json")) if self.store.exists("plan.json") else None

    def write_data_info(self, dataset: str, in_shape, classes, mean: list[float], std: list[float],
                        eval_crop: float = 1.0) -> None:
        """data.json: the model's input (C, H, W), its classes by label, the per-channel mean and
        std of the training images in [0, 1] units that every input is normalised with, and the
        share of an image's shorter side its evaluation crop keeps (streamed sets: 224/256)."""
        info = {"format": 1, "dataset": dataset, "in_shape": list(in_shape), "classes": list(classes),
                "mean": list(mean), "std": list(std), "eval_crop": eval_crop}
        self.store.write_text("data.json", json.dumps(info, indent=1) + "\n")

    def data_info(self) -> dict | None:
        """data.json (None: a run folder from before it was kept)."""
        return json.loads(self.store.read_text("data.json")) if self.store.exists("data.json") else None

    def record_layout(self, attempt: int, step: int, change: str) -> None:
        """A layout change in failures.jsonl, beside the failures that caused it (never a cause)."""
        self.record_failure(None, step, change, attempt, secondary=True, layout=True)

    # -- metrics and evaluations ------------------------------------------------------------
    def write_stage_metrics(self, stage_id: int, rows: list[dict]) -> None:
        """Each stage writes all its rows (a resumed stage starts from the earlier ones)."""
        from ffpipe.telemetry.rows import rows_to_parquet  # pyarrow and torch: only where metrics are written
        self.store.write_bytes(_stage_metrics(stage_id), rows_to_parquet(rows))

    def read_stage_metrics(self, stage_id: int, up_to_step: int) -> list[dict]:
        """The rows a stage had logged up to `up_to_step`: what a resumed stage starts from."""
        return [r for r in self._read_metrics([_stage_metrics(stage_id)]) if r["step"] <= up_to_step]

    def stage_metric_files(self) -> list[str]:
        """metrics/stage-<k>.parquet in stage order; never a file still being written (.tmp-<hex>)."""
        found = (re.fullmatch(r"stage-(\d+)\.parquet", n) for n in self.store.list("metrics"))
        return [_stage_metrics(k) for k in sorted(int(m.group(1)) for m in found if m)]

    def regroup_metrics(self, starts: list[int], num_units: int) -> None:
        """The stages' metric files after a layout change: each new stage's file holds the rows
        of its units (the rows keep the stage that logged them)."""
        from ffpipe.telemetry.rows import rows_to_parquet

        names = self.stage_metric_files()
        rows = self._read_metrics(names)
        ends = [*starts[1:], num_units]
        for k, (first, end) in enumerate(zip(starts, ends)):
            mine = [r for r in rows if first <= r["unit"] < end]
            self.store.write_bytes(_stage_metrics(k), rows_to_parquet(mine))
        for name in set(names) - {_stage_metrics(k) for k in range(len(starts))}:
            self.store.delete(name)

    def merge_metrics(self, num_stages: int, extra_rows: list[dict]) -> list[dict]:
        from ffpipe.telemetry.rows import rows_to_parquet
        rows = self._read_metrics([_stage_metrics(k) for k in range(num_stages)]) + extra_rows
        self.store.write_bytes("metrics.parquet", rows_to_parquet(rows))
        return rows

    def _read_metrics(self, names: list[str]) -> list[dict]:
        from ffpipe.telemetry.rows import rows_of_parquet
        return rows_of_parquet([self.store.read_bytes(n) for n in names if self.store.exists(n)])

    def append_history(self, result: dict) -> None:
        self.store.append_line("history.jsonl", json.dumps(result))

    def history(self, up_to_step: int) -> list[dict]:
        """Evaluations up to a step, one per step (a restarted attempt may have written it again)."""
        by_step = {r["step"]: r for r in self._read_jsonl("history.jsonl") if r["step"] <= up_to_step}
        return [by_step[step] for step in sorted(by_step)]

    # -- failures and restarts ----------------------------------------------------------------
    def record_failure(self, stage_id: int | None, step: int | None, cause: str, attempt: int,
                       secondary: bool = False, layout: bool = False, silent_rank: int | None = None) -> dict:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "attempt": attempt, "stage": stage_id,
                 "step": step, "cause": cause, "secondary": secondary}
        if layout:
            entry["layout"] = True
        if silent_rank is not None:  # the rank a neighbour heard nothing from (errors.NeighbourError)
            entry["silent_rank"] = silent_rank
        self.store.append_line("failures.jsonl", json.dumps(entry))
        return entry

    def failures(self) -> list[dict]:
        return self._read_jsonl("failures.jsonl")

    def _read_jsonl(self, name: str) -> list[dict]:
        """Every complete line; a line cut short by a killed process is skipped."""
        if not self.store.exists(name):
            return []
        entries = []
        for line in self.store.read_text(name).splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return entries

    # -- results ------------------------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        self.store.write_text("summary.json", json.dumps(summary, indent=2) + "\n")

    def summary(self) -> dict:
        if not self.store.exists("summary.json"):
            raise FFPipeError(f"{self} has no summary.json: not a finished run folder")
        return json.loads(self.store.read_text("summary.json"))

    def write_eval(self, result: dict) -> None:
        self.store.write_text("eval.json", json.dumps(result, indent=2) + "\n")

    def eval_result(self) -> dict | None:
        """eval.json, the newest `ffpipe eval` (None: never evaluated so)."""
        return json.loads(self.store.read_text("eval.json")) if self.store.exists("eval.json") else None


def _stage_metrics(stage_id: int) -> str:
    return f"metrics/stage-{stage_id}.parquet"


def run_location(cfg: Config, run_dir: str = "") -> str | None:
    """Where the run named by `run_dir` (default: cfg's run.dir) lives: inside run.storage when
    that is set (None: no name, so a new run gets a timestamped folder)."""
    run_dir = run_dir or cfg.run.dir
    if not run_dir:
        return None
    return join(cfg.run.storage, run_dir) if cfg.run.storage else run_dir


def new_run_dir(cfg: Config) -> str:
    """A run.dir for a new run, that every process of it can be given: <timestamp> (then -2,
    -3, ...) not yet used, inside run.storage or runs/."""
    root = cfg.run.storage or "runs"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name, n = stamp, 1
    while RunFolder(join(root, name)).exists() or (not is_uri(root) and (Path(root) / name).exists()):
        n += 1
        name = f"{stamp}-{n}"
    return name if cfg.run.storage else str(Path("runs") / name)
