"""The run folder: the one place that knows where a run keeps what.

    <run>/config.toml              the resolved config (ffpipe train --config <run>/config.toml repeats it)
    <run>/partition.json           the stage split: the first unit of every stage
    <run>/checkpoints/stage-<k>/   stage k's checkpoints (run/checkpoints.py)
    <run>/metrics/stage-<k>.parquet  each stage's metric rows; merged into <run>/metrics.parquet
    <run>/history.jsonl            every evaluation, written as it happens
    <run>/failures.jsonl           every stage failure of the run (what automatic restarts read)
    <run>/summary.json, <run>/eval.json, <run>/plots/

A RunFolder is a small value (a path): it travels to every stage process.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ffpipe import config as config_mod
from ffpipe.config import Config
from ffpipe.errors import ConfigError, FFPipeError

# What may change when a run is resumed: nothing that changes the arithmetic or the stage split.
RESUMABLE_SECTIONS = ("run.",)
RESUMABLE_KEYS = {"pipeline.timeout_s", "pipeline.queue_depth", "pipeline.backend", "pipeline.transport",
                  "pipeline.ray_tensor_transport", "pipeline.address", "pipeline.placement",
                  "pipeline.cpus_per_stage", "pipeline.max_restarts", "pipeline.replicas",
                  "train.log_every"}


@dataclass(frozen=True)
class RunFolder:
    path: Path

    # -- making and opening ----------------------------------------------------------------
    @classmethod
    def create(cls, cfg: Config) -> "RunFolder":
        """A new folder for this run; refuses one that already holds a run (nothing is overwritten)."""
        if cfg.run.dir:
            path = Path(cfg.run.dir)
            if (path / "config.toml").exists():
                raise FFPipeError(f"run folder {path} already holds a run; choose another run.dir, "
                                  f"or continue it with: ffpipe train --resume {path}")
        else:
            path = new_run_path()
        path.mkdir(parents=True, exist_ok=True)
        folder = cls(path)
        folder.config_path.write_text(config_mod.to_toml(cfg))
        return folder

    @classmethod
    def open(cls, path: str | Path, what: str = "a run folder") -> "RunFolder":
        folder = cls(Path(path))
        if not folder.config_path.is_file():
            raise FFPipeError(f"{path} is not {what} (no config.toml); pass a folder made by ffpipe train")
        return folder

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    def config(self, overrides: list[str] = ()) -> Config:
        return config_mod.load(self.config_path, overrides)

    def resume_config(self, overrides: list[str]) -> Config:
        """The run's own config with the few keys that may change on resume. A stop point saved
        with the run stopped it once and is dropped (pass run.stop_after_step again to stop)."""
        for text in overrides:
            key = text.split("=", 1)[0].strip()
            if key == "run.dir" or not (key in RESUMABLE_KEYS or key.startswith(RESUMABLE_SECTIONS)):
                raise ConfigError(f"'{key}' cannot change when a run is resumed (it would change what "
                                  "the checkpoints mean, or where they are); keys that can: run.* but "
                                  f"run.dir, {', '.join(sorted(RESUMABLE_KEYS))}")
        cfg = self.config(overrides)
        if not any(o.strip().startswith("run.stop_after_step") for o in overrides):
            cfg.run.stop_after_step = 0
        return cfg

    def __str__(self) -> str:
        return str(self.path)

    # -- the stage split ---------------------------------------------------------------------
    def write_partition(self, starts: list[int]) -> None:
        (self.path / "partition.json").write_text(json.dumps({"starts": starts}) + "\n")

    def partition(self) -> list[int]:
        path = self.path / "partition.json"
        if not path.is_file():
            raise FFPipeError(f"{self.path} has no partition.json: the run stopped before its stages "
                              "were chosen; start it again instead of resuming it")
        return json.loads(path.read_text())["starts"]

    # -- metrics and evaluations ------------------------------------------------------------
    def stage_metrics_path(self, stage_id: int) -> Path:
        path = self.path / "metrics" / f"stage-{stage_id}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_stage_metrics(self, stage_id: int, rows: list[dict]) -> None:
        """Each stage writes all its rows (a resumed stage starts from the earlier ones)."""
        from ffpipe.metrics import write_rows  # pyarrow and torch: only where metrics are written
        write_rows(rows, self.stage_metrics_path(stage_id))

    def read_stage_metrics(self, stage_id: int, up_to_step: int) -> list[dict]:
        """The rows a stage had logged up to `up_to_step`: what a resumed stage starts from."""
        from ffpipe.metrics import read_rows
        return [r for r in read_rows([self.stage_metrics_path(stage_id)]) if r["step"] <= up_to_step]

    def merge_metrics(self, num_stages: int, extra_rows: list[dict]) -> list[dict]:
        from ffpipe.metrics import read_rows, write_rows
        rows = read_rows([self.stage_metrics_path(k) for k in range(num_stages)]) + extra_rows
        write_rows(rows, self.path / "metrics.parquet")
        return rows

    def append_history(self, result: dict) -> None:
        _append_json(self.path / "history.jsonl", result)

    def history(self, up_to_step: int) -> list[dict]:
        """Evaluations up to a step, one per step (a restarted attempt may have written it again)."""
        by_step = {r["step"]: r for r in _read_jsonl(self.path / "history.jsonl") if r["step"] <= up_to_step}
        return [by_step[step] for step in sorted(by_step)]

    # -- failures and restarts ----------------------------------------------------------------
    def record_failure(self, stage_id: int | None, step: int | None, cause: str, attempt: int,
                       secondary: bool = False) -> dict:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "attempt": attempt, "stage": stage_id,
                 "step": step, "cause": cause, "secondary": secondary}
        _append_json(self.path / "failures.jsonl", entry)
        return entry

    def failures(self) -> list[dict]:
        return _read_jsonl(self.path / "failures.jsonl")

    # -- results ------------------------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    def summary(self) -> dict:
        path = self.path / "summary.json"
        if not path.is_file():
            raise FFPipeError(f"{self.path} has no summary.json: not a finished run folder")
        return json.loads(path.read_text())

    def write_eval(self, result: dict) -> None:
        (self.path / "eval.json").write_text(json.dumps(result, indent=2) + "\n")

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"


def new_run_path(root: Path = Path("runs")) -> Path:
    """runs/<timestamp>, with -2, -3, ... when that exists already."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = root / stamp, 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{n}"
    return path


def _append_json(path: Path, entry: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    """Every complete line; a line cut short by a killed process is skipped."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries
