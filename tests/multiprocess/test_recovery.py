"""A torchrun run that loses a stage process goes on by itself (launch/torchrun.sh) and ends where
an uninterrupted run ends, bit for bit; a failure that repeats is not restarted; a user error under
torchrun (launch/torchrun.sh or plain torchrun) is said once. Ray's: tests/ray/test_ray_recovery.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers.machine import processes_with
from tests.helpers.runs import (EXACT, LAUNCH_ENV, LONG, assert_same_parameters, launch, sequential_run, summary,
                                wait_for_checkpoint)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return sequential_run(tmp_path_factory.mktemp("ref") / "sequential", LONG)


def test_torchrun_recovers_from_a_killed_stage_process_bit_for_bit(reference, tmp_path):
    run_dir = tmp_path / "torchrun"
    sets = [a for o in LONG + [f"run.dir={run_dir}"] for a in ("--set", o)]
    proc = launch(["bash", "launch/torchrun.sh", "2", *sets])
    wait_for_checkpoint(run_dir, 1, 40, proc)
    victims = processes_with("ffpipe", f"run.dir={run_dir}", env_needle="RANK=1")
    assert len(victims) == 1, victims
    killed_at = time.time()
    os.kill(victims[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    assert "ffpipe: stage 1 failed" in err and "killed by SIGKILL" in err and "restarting (1 of 3)" in err
    assert "Traceback" not in err
    assert_same_parameters(reference, run_dir)
    result = summary(run_dir)
    primary = [(r["stage"], r["attempt"]) for r in result["restarts"] if not r["secondary"]]
    assert result["completed"] and primary == [(1, 0)]
    print(f"torchrun: SIGKILL to the end of the run {time.time() - killed_at:.1f} s")


def test_a_failure_that_repeats_is_restarted_once_then_named(tmp_path):
    run_dir = tmp_path / "r"
    sets = [a for o in EXACT + ["model.name=small_cnn", "train.lr=1e12", "train.warmup_fraction=0",
                                "train.max_steps=6", f"run.dir={run_dir}", "pipeline.boundaries=[2]"]
            for a in ("--set", o)]
    done = subprocess.run(["bash", "launch/torchrun.sh", "2", *sets], cwd=REPO, env=LAUNCH_ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "restarting (1 of 3)" in done.stderr
    assert "for the same reason as in the attempt before" in done.stderr
    assert "became non-finite" in done.stderr and "launch/torchrun.sh 2 --resume" in done.stderr
    primary = [f for f in (run_dir / "failures.jsonl").read_text().splitlines() if '"secondary": false' in f]
    assert len(primary) == 2


def test_a_user_error_under_torchrun_is_said_once_without_a_traceback(tmp_path):
    done = subprocess.run(["bash", "launch/torchrun.sh", "2", "--set", "train.batch_size=0"], cwd=REPO,
                          env=LAUNCH_ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("config key 'train.batch_size' must be >= 1") == 1
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("bad, said", [
    ("train.batch_size=0", "config key 'train.batch_size' must be >= 1"),  # the CLI's config check
    ("pipeline.stages=3", "pipeline.stages = 3 but torchrun started 2 processes"),  # a rank's set-up
])
def test_a_user_error_under_plain_torchrun_is_said_once(bad, said):
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "ffpipe", "train", "--set", "pipeline.backend=torchrun", "--set", bad],
                          cwd=REPO, env=LAUNCH_ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.count("ffpipe: error:") == 1 and said in done.stderr, done.stderr[-3000:]
