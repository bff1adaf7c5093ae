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


def test_a_stage_actor_slow_to_start_or_failing_is_named_with_the_setting_to_raise(monkeypatch):
    """What the driver waits for while stage actors start (their construction, the rendezvous):
    past the deadline, the stages that did not answer and pipeline.timeout_s are named, never
    Ray's bare "Get timed out"; an actor that fails names its stage and its own error."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    from ffpipe import config as config_mod
    from ffpipe.backends import ray_backend
    from ffpipe.run.recovery import StageFailed

    monkeypatch.setattr(ray_backend, "STAGE_START_S", 1.0)
    cfg = config_mod.load(None, ["pipeline.timeout_s=2"])
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        answer = ray.remote(num_cpus=0)(lambda wait_s: time.sleep(wait_s) or wait_s)
        refs = [answer.remote(0), answer.remote(60), answer.remote(0)]
        ray.get([refs[0], refs[2]])  # those two have answered: stage 1's slow one has not
        with pytest.raises(StageFailed) as slow:
            ray_backend._get(refs, [0, 1, 2], cfg)
        assert slow.value.stage_id == 1 and "the actor of stage(s) 1 did not start within 2 s" in str(slow.value)
        assert "raise pipeline.timeout_s" in str(slow.value)
        broken = ray.remote(num_cpus=0)(lambda: (_ for _ in ()).throw(ValueError("no data here")))
        with pytest.raises(StageFailed, match=r"stage 2 failed: .*ValueError: no data here"):
            ray_backend._get([answer.remote(0), broken.remote()], [1, 2], cfg)
    finally:
        ray.shutdown()
