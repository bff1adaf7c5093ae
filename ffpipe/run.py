"""The run folder: resolved config, metrics.parquet, summary.json, checkpoints and plots."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ffpipe import config as config_mod
from ffpipe.config import Config
from ffpipe.errors import FFPipeError
from ffpipe.metrics import read_rows, write_rows


def create_run_dir(cfg: Config) -> Path:
    """A new folder for this run; refuses a folder that already holds a run (nothing is overwritten)."""
    if cfg.run.dir:
        path = Path(cfg.run.dir)
        if (path / "config.toml").exists():
            raise FFPipeError(f"run folder {path} already holds a run; choose another run.dir, "
                              f"or continue it with: ffpipe train --resume {path}")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / stamp
        n = 1
        while path.exists():
            n += 1
            path = Path("runs") / f"{stamp}-{n}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.toml").write_text(config_mod.to_toml(cfg))
    return path


def load_run_config(run_dir: Path, overrides: list[str] = ()) -> Config:
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise FFPipeError(f"{run_dir} is not a run folder (no config.toml); pass a folder made by "
                          "ffpipe train")
    return config_mod.load(path, overrides)


def stage_metrics_path(run_dir: Path, stage_id: int) -> Path:
    path = Path(run_dir) / "metrics" / f"stage-{stage_id}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_stage_metrics(run_dir: Path, stage_id: int, rows: list[dict]) -> None:
    """Each stage writes its own rows (all of them: a resumed stage starts from the earlier ones)."""
    write_rows(rows, stage_metrics_path(run_dir, stage_id))


def read_stage_metrics(run_dir: Path, stage_id: int, up_to_step: int) -> list[dict]:
    """The rows a stage had logged up to `up_to_step`: what a resumed stage starts from."""
    return [r for r in read_rows([stage_metrics_path(run_dir, stage_id)]) if r["step"] <= up_to_step]


def append_history(run_dir: Path, result: dict) -> None:
    with open(Path(run_dir) / "history.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")


def read_history(run_dir: Path, up_to_step: int) -> list[dict]:
    path = Path(run_dir) / "history.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= up_to_step]


def merge_metrics(run_dir: Path, num_stages: int, test_rows: list[dict]) -> list[dict]:
    paths = [stage_metrics_path(run_dir, k) for k in range(num_stages)]
    rows = read_rows(paths) + test_rows
    write_rows(rows, Path(run_dir) / "metrics.parquet")
    return rows


def test_rows(history: list[dict]) -> list[dict]:
    """Evaluation results as metric rows: one per unit and one (unit = -1) for the vote."""
    rows = []
    for h in history:
        base = {"phase": "test", "epoch": h["epoch"], "step": h.get("step", 0), "stage": -1}
        rows.append({**base, "unit": -1, "accuracy": h["test_accuracy"]})
        rows += [{**base, "unit": u, "accuracy": a} for u, a in enumerate(h["test_accuracy_per_unit"])]
    return rows


def write_summary(run_dir: Path, summary: dict) -> None:
    (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())
