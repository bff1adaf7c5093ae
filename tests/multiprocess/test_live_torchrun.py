"""A torchrun pipeline seen while it runs: every stage's TensorBoard tags and metric rows are in the
run folder before the run ends, and the progress line shows every stage's rate (each rank logs
its own; they meet in torchrun's store). A stage whose neighbour stopped answering leaves a stack
dump that shows where it waits, and its failure names the file."""
import os
import re
import signal
import sys
import time

import pytest

from ffpipe.reports.runs import status
from tests.helpers.machine import processes_with
from tests.helpers.runs import LONG, launch, seen_live

pytestmark = pytest.mark.slow


def _torchrun(run_dir, *extra: str):
    sets = [a for o in LONG + ["pipeline.backend=torchrun", "pipeline.stages=2", f"run.dir={run_dir}", *extra]
            for a in ("--set", o)]
    return launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                   "-m", "ffpipe", "train", *sets])


def test_every_stage_is_seen_live_before_the_run_ends(tmp_path):
    run_dir = tmp_path / "r"
    proc = _torchrun(run_dir, "run.loggers=['tensorboard']", "run.progress=true", "train.log_every=4")
    seen = seen_live(run_dir, proc)
    assert {"stage0/images_per_s", "unit0/loss"} <= seen[0] and {"stage1/share_busy", "unit6/loss"} <= seen[1]
    now = status(str(run_dir))  # `ffpipe status` of the running run: every stage, and the time left
    assert now.startswith("r: running") and "stage 0: step" in now and "stage 1: step" in now, now
    assert re.search(r"time left at the last stage's pace: [\d.]+ min \(\d+ of \d+ steps\)", now), now
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert re.search(r"img/s per stage \[[\d,]+ [\d,]+\]", err), err[-2000:]  # both rates, not "-"


def test_a_stage_whose_neighbour_stopped_leaves_a_stack_dump_of_where_it_waits(tmp_path):
    run_dir = tmp_path / "r"
    proc = _torchrun(run_dir, "pipeline.timeout_s=6")  # a dump after 3 s without progress
    deadline = time.time() + 120
    while not list(run_dir.glob("checkpoints/step-*.pt")) and time.time() < deadline:
        time.sleep(0.05)
    stopped = processes_with(f"run.dir={run_dir}", env_needle="RANK=1")
    os.kill(stopped[0], signal.SIGSTOP)
    dump = run_dir / "flight" / "stage-0-attempt-0.txt"
    while processes_with(f"run.dir={run_dir}", env_needle="RANK=0") and time.time() < deadline:
        time.sleep(0.1)  # stage 0 gives up on its neighbour after pipeline.timeout_s, and says why
    os.kill(stopped[0], signal.SIGKILL)  # ends the run now (torchrun would wait 30 s on it)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and f"its stacks and last events: {dump}" in err, err[-3000:]
    text = dump.read_text()
    assert "stage 0 made no progress" in text and re.search(r"(recv|sent|done) TRAIN epoch \d+ step \d+", text)
    assert "transport/p2p.py" in text and "in _wait" in text, text[-3000:]  # the call it waits in
