"""A Ray run that loses a stage actor goes on by itself from the newest common checkpoint and ends
where an uninterrupted run ends, bit for bit."""
import os
import signal
import sys

import pytest

from tests.helpers.machine import processes_with
from tests.helpers.runs import LONG, assert_same_parameters, launch, sequential_run, summary, wait_for_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray at a time: agents' ports collide


def test_ray_recovers_from_a_killed_stage_actor_bit_for_bit(tmp_path):
    reference = sequential_run(tmp_path / "sequential", LONG)
    run_dir = tmp_path / "ray"
    sets = [a for o in LONG + [f"run.dir={run_dir}", "pipeline.backend=ray", "pipeline.stages=2"]
            for a in ("--set", o)]
    proc = launch([sys.executable, "-m", "ffpipe", "train", *sets])
    wait_for_checkpoint(run_dir, 1, 40, proc, timeout=180)
    victims = processes_with("StageWorker")
    assert len(victims) == 2, victims
    os.kill(max(victims), signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    assert "the stage actor died" in err and "restarting (1 of 3)" in err
    assert_same_parameters(reference, run_dir)
    restarts = summary(run_dir)["restarts"]
    assert len([r for r in restarts if not r["secondary"]]) == 1 and restarts[0]["attempt"] == 0
