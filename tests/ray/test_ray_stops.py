"""How Ray runs stop, and what they leave (issue 26's findings 2 and 6): the stages' checkpoints on
the Ray transport always share a complete step; Ctrl-C names the folder to resume and leaves no
temporary file; a run that cannot join its cluster leaves its run.dir free for the next try."""
import signal
import sys
import time

import pytest

from ffpipe.run.checkpoints import complete_steps, saved
from ffpipe.run.folder import RunFolder
from tests.helpers import free_port
from tests.helpers.runs import EXACT, launch, run_ffpipe

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

SMALL = EXACT + ["model.name=small_cnn", "model.granularity=layer"]


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def test_the_stages_checkpoints_on_the_ray_transport_always_share_a_complete_step(tmp_path):
    """The finding: 4 stages, queue_depth 4, a checkpoint every step; once the stages were 22
    steps apart, at 6 moments no step was common to all of them."""
    run_dir = tmp_path / "r"
    proc = launch([sys.executable, "-m", "ffpipe", "train", *_sets(SMALL + [
        "pipeline.backend=ray", "pipeline.transport=ray", "pipeline.stages=4", "pipeline.queue_depth=4",
        "run.checkpoint_every=1", "train.epochs=20", "train.eval_every=100", f"run.dir={run_dir}"])])
    seen, polls, lost = set(), 0, []
    while proc.poll() is None:
        if (run_dir / "checkpoints").is_dir():
            complete = complete_steps(saved(RunFolder(run_dir)), 7)
            polls += 1
            if seen and not complete:
                lost.append(polls)
            seen |= set(complete)
        time.sleep(0.01)
    assert proc.returncode == 0, proc.communicate()[1][-3000:]
    assert len(seen) > 50 and not lost, f"{len(lost)} of {polls} looks found no complete step"


def test_ctrl_c_of_a_ray_run_names_its_folder_and_leaves_no_temporary_file(tmp_path):
    run_dir = tmp_path / "r"
    proc = launch([sys.executable, "-m", "ffpipe", "train", *_sets(SMALL + [
        "pipeline.backend=ray", "pipeline.stages=2", "train.epochs=500", "run.checkpoint_every=2",
        f"run.dir={run_dir}"])])
    deadline = time.time() + 120
    while not list(run_dir.glob("checkpoints/step-*.pt")) and time.time() < deadline:
        time.sleep(0.1)
    killed_writer = run_dir / "checkpoints" / "step-000000002-units-0000-0001.pt.tmp-0123abcd"
    killed_writer.write_bytes(b"half a checkpoint")  # what a stage killed while saving leaves
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert f"the run goes on from its newest checkpoints with: ffpipe train --resume {run_dir}" in err
    assert not list(run_dir.rglob("*.tmp-*"))


def test_a_run_that_cannot_join_its_cluster_leaves_its_run_dir_free(tmp_path):
    run_dir, nobody = tmp_path / "r", f"127.0.0.1:{free_port()}"
    for _ in range(2):  # the second try meets the same error, not "already holds a run"
        done = run_ffpipe(SMALL + ["pipeline.backend=ray", f"pipeline.address={nobody}", "pipeline.timeout_s=5",
                                   f"run.dir={run_dir}"], check=False, timeout=120)
        assert done.returncode == 2 and f"nothing answers at {nobody}" in done.stderr, done.stderr[-2000:]
    assert not (run_dir / "config.toml").exists()
