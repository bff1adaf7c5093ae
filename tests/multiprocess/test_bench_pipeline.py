"""`ffpipe bench pipeline` end to end at a tiny size on 2 CPU processes (gloo): every row of the
plan measured, and the largest-batch table."""
import os
import subprocess
import sys

import pytest

from ffpipe.bench import pipeline as bench
from ffpipe.bench.pipelining import available_schedules
from tests.helpers import REPO


@pytest.mark.slow
def test_bench_pipeline_runs_every_row_on_cpu(tmp_path):
    """The whole command at a tiny size on 2 CPU processes: every row measured. (The largest-batch
    search of --max-batch: tests/unit/test_bench_plan.py, with stand-in runs.)"""
    sets = ["train.device=cpu", "data.synthetic_train=64", "data.synthetic_test=16", "train.batch_size=16",
            "train.epochs=1", "train.eval_batch_size=16"]
    cmd = [sys.executable, "-m", "ffpipe", "bench", "pipeline", "--stages", "2", "--microbatches", "2",
           "--model", "small_cnn", "--shape", "3", "16", "16", "--classes", "10", "--peer-steps", "1",
           "--peer-warmup", "0", "--out", str(tmp_path),
           *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "bench.md").read_text()
    assert "failed" not in table
    for name in ("ddp + activation checkpointing per unit", "ddp + gradient accumulation", "gpipe", "1f1b",
                 *[bench.SCHEDULE_LABELS[s] for s in available_schedules()]):
        assert table.count(f"| {name}") == 1
