"""Failures on GPUs with NCCL never hang: a stage that fails (non-finite loss) ends the run within
pipeline.timeout_s + 30 s naming it, and a SIGKILLed stage process is restarted and the run
completes; torchrun (launch/torchrun.sh) and Ray actors (p2p over NCCL). Needs 2 GPUs; prints
the times it measures (recorded in docs/benchmarks.md)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from tests.helpers import REPO
from tests.helpers.runs import wait_for_checkpoint
from tests.helpers.machine import processes_with

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")]
TIMEOUT_S = 20
# ResNet18 on CIFAR-shaped data in bf16; SGD 0.05 with the paper goodness runs away in a deep
# unit within a few dozen steps (the failure a user met on 4 H100s on 2026-11-28).
DIVERGES = ["--config", "configs/bench_resnet18.toml", "--set", "train.optimizer=sgd", "--set", "train.lr=0.05",
            "--set", f"pipeline.timeout_s={TIMEOUT_S}", "--set", "train.log_every=5", "--set", "run.progress=false"]
LONG = ["--config", "configs/bench_resnet18.toml", "--set", "train.epochs=6", "--set", "run.checkpoint_every=20",
        "--set", f"pipeline.timeout_s={TIMEOUT_S}", "--set", "run.progress=false"]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}", "PYTHON": sys.executable}


def _ray(args):
    return [sys.executable, "-m", "ffpipe", "train", "--set", "pipeline.backend=ray", "--set", "pipeline.stages=2", *args]


def _torchrun(args):
    return ["bash", "launch/torchrun.sh", "2", *args]


@pytest.mark.parametrize("launch", [_torchrun, _ray], ids=["torchrun", "ray"])
def test_a_failing_stage_ends_a_gpu_run_in_bounded_time_with_its_name(launch, tmp_path):
    t0 = time.time()
    done = subprocess.run(launch([*DIVERGES, "--set", f"run.dir={tmp_path / 'r'}", "--set", "pipeline.max_restarts=0"]),
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S + 240)
    took = time.time() - t0
    print(f"\n{launch.__name__}: a stage's non-finite loss ended the run in {took:.1f} s (start-up included)")
    assert done.returncode != 0
    assert "became non-finite" in done.stderr and re.search(r"stage \d failed", done.stderr), done.stderr[-3000:]
    assert took < TIMEOUT_S + 30 + 60  # the bound, plus start-up (Ray cluster, CUDA, data)


@pytest.mark.parametrize("launch", [_torchrun, _ray], ids=["torchrun", "ray"])
def test_a_killed_gpu_stage_process_is_restarted_and_the_run_completes(launch, tmp_path):
    run_dir = tmp_path / "r"
    proc = subprocess.Popen(launch([*LONG, "--set", f"run.dir={run_dir}"]), cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.time(), line) for line in proc.stderr))
    reader.start()
    wait_for_checkpoint(run_dir, 1, 40, proc, timeout=240)
    victims = (processes_with("ffpipe", f"run.dir={run_dir}", env_needle="RANK=1") if launch is _torchrun
               else processes_with("StageWorker"))
    killed = time.time()
    os.kill(max(victims), signal.SIGKILL)
    proc.wait(timeout=420)
    reader.join()
    err = "".join(line for _, line in lines)
    resumed = [t for t, line in lines if t > killed and "resuming at step" in line]
    print(f"\n{launch.__name__}: SIGKILL of a stage process -> stages resuming {resumed[0] - killed:.1f} s "
          f"later -> run completed {time.time() - killed:.1f} s later" if resumed else "")
    assert proc.returncode == 0, err[-3000:]
    assert "restarting (1 of 3)" in err and resumed
