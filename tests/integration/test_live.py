"""A run's live account, end to end on the local backend: TensorBoard, W&B (offline) and MLflow
(file store) get every stage's tags through their own clients, and the run reads back through
`ffpipe runs`, `status`, `compare` and `report`."""
import json
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.helpers.runs import EXACT, run_ffpipe, scalar_tags

pytestmark = pytest.mark.slow

TWO_STAGES = EXACT + ["model.name=small_cnn", "pipeline.stages=2", "train.epochs=2", "train.log_every=2"]


def _ffpipe(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "ffpipe", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_every_logger_gets_every_stage_and_the_runs_read_back(tmp_path):
    run_dir, other = tmp_path / "live", tmp_path / "other"
    run_ffpipe(TWO_STAGES + [f"run.dir={run_dir}", "run.loggers=['tensorboard', 'wandb', 'mlflow']", "run.plots=true"])
    stage0, stage1 = (scalar_tags(run_dir / "tensorboard" / f"stage-{k}") for k in (0, 1))
    assert {"stage0/images_per_s", "stage0/share_busy", "stage0/queue_fill", "unit0/loss"} <= stage0
    assert {"stage1/images_per_s", "unit3/train_accuracy", "test/accuracy", "test/accuracy_unit3"} <= stage1
    assert len(list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))) == 2  # a W&B run per stage
    runs = [p.parent for p in (run_dir / "mlruns").glob("*/*/meta.yaml") if (p.parent / "metrics").is_dir()]
    assert len(runs) == 2 and all((r / "metrics" / "unit0.loss").exists() or (r / "metrics" / "unit3.loss").exists()
                                  for r in runs)
    run_ffpipe(TWO_STAGES + [f"run.dir={other}", "run.loggers=[]", "train.lr=0.01"])
    assert not (other / "tensorboard").exists()
    listing = _ffpipe("runs", str(tmp_path))
    assert "live | done | small_cnn | sff block" in listing and "other | done" in listing
    assert "stage 1: step 12" in _ffpipe("status", str(run_dir))
    differs = _ffpipe("compare", str(run_dir), str(other))
    assert "| train.lr | 0.002 | 0.01 |" in differs and "| **test_accuracy** |" in differs
    table = _ffpipe("report", str(run_dir), str(other), "--plots", str(tmp_path / "plots"))
    assert table.count("small_cnn SFF hybrid") == 2 and (tmp_path / "plots" / "runs.png").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["layouts"] and (run_dir / "plots" / "stage_timeline.png").exists()
