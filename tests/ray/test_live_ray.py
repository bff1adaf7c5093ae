"""A Ray pipeline seen while it runs: every stage actor's TensorBoard tags and metric rows are in
the run folder before the run ends."""
import sys

import pytest

from tests.helpers.runs import LONG, launch, seen_live

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


def test_every_stage_actor_is_seen_live_before_the_run_ends(tmp_path):
    run_dir = tmp_path / "r"
    sets = [a for o in LONG + ["pipeline.backend=ray", "pipeline.stages=2", f"run.dir={run_dir}",
                               "run.loggers=['tensorboard']", "train.log_every=4"] for a in ("--set", o)]
    proc = launch([sys.executable, "-m", "ffpipe", "train", *sets])
    seen = seen_live(run_dir, proc)
    assert {"stage0/images_per_s", "unit0/loss"} <= seen[0] and {"stage1/share_busy", "unit6/loss"} <= seen[1]
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
