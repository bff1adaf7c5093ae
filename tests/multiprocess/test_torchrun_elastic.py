"""torchrun's own elastic launch (--nnodes=1:2, c10d rendezvous; two agents on this machine stand
for two nodes): when a node is lost, the agent left re-forms the job with one process, and the run
re-partitions its units over one stage, resumes from the newest complete step and learns exactly
what the sequential trainer learns (checkpoints are keyed by unit: the layout is free)."""
import os
import signal
import sys
import time

import pytest

from tests.helpers import free_port
from tests.helpers.machine import processes_with
from tests.helpers.runs import EXACT, assert_same_parameters, launch, sequential_run, summary

pytestmark = pytest.mark.slow

RUN = EXACT + ["model.name=small_cnn", "model.granularity=layer", "train.epochs=100", "train.eval_every=1000",
               "run.checkpoint_every=4", "pipeline.timeout_s=10"]


def _agent(port: int, run_dir) -> object:
    sets = [a for o in RUN + ["pipeline.backend=torchrun", f"run.dir={run_dir}"] for a in ("--set", o)]
    return launch([sys.executable, "-m", "torch.distributed.run", "--nnodes=1:2", "--nproc-per-node=1",
                   "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=ffpipe-elastic",
                   "--max-restarts=3", "--rdzv-conf=join_timeout=60,last_call_timeout=5,close_timeout=10",
                   "-m", "ffpipe", "train", *sets], new_session=True)


def test_a_run_under_torchrun_elastic_goes_on_with_the_node_left_bit_for_bit(tmp_path):
    reference = sequential_run(tmp_path / "sequential", RUN)
    run_dir, port = tmp_path / "elastic", free_port()
    first = _agent(port, run_dir)
    time.sleep(1)
    second = _agent(port, run_dir)
    try:
        deadline = time.time() + 120
        while len(list(run_dir.glob("checkpoints/step-*.pt"))) < 4 and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(second.pid, signal.SIGKILL)  # the second node is gone: its agent, and its worker
        for pid in processes_with(f"run.dir={run_dir}", env_needle="GROUP_RANK=1"):
            os.kill(pid, signal.SIGKILL)
        _, err = first.communicate(timeout=300)
    finally:
        for agent in (first, second):
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
    assert first.returncode == 0, err[-4000:]
    assert "-> 1 stage(s)" in err and "resuming at step" in err
    result = summary(run_dir)
    assert result["completed"] and result["num_stages"] == 1 and len(result["layouts"]) == 2
    assert_same_parameters(reference, run_dir)
