"""Small parts of a run, each on its own: the learning-rate schedule, the channel factory's
bound, checkpoint pruning and fallback, and the restart policy."""
from __future__ import annotations

import math
import os
import pickle
import threading
import time

import pytest

from ffpipe.config import PipelineConfig, TrainConfig
from ffpipe.errors import NeighbourError
from ffpipe.ff.optim import lr_at
from ffpipe.pipeline.messages import control, Phase
from ffpipe.run.folder import RunFolder
from ffpipe.run.recovery import Attempt, StageFailed, restart_verdict, root_cause
from ffpipe.transport import open_channel
from tests.helpers import make_config


def test_lr_warms_up_linearly_then_follows_a_cosine_to_zero():
    cfg = TrainConfig(lr=1.0, warmup_fraction=0.1, schedule="cosine")
    assert [lr_at(s, 100, cfg) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_at(10, 100, cfg) == 1.0
    assert math.isclose(lr_at(55, 100, cfg), 0.5, abs_tol=1e-12)
    assert lr_at(100, 100, cfg) == 0.0
    assert lr_at(50, 100, TrainConfig(lr=0.3, warmup_fraction=0.0, schedule="constant")) == 0.3


def test_a_thread_channel_holds_queue_depth_messages_then_waits_until_the_deadline():
    channel = open_channel("threads", PipelineConfig(queue_depth=2, timeout_s=0.3), name="a -> b")
    for step in range(2):
        channel.send(control(Phase.TRAIN, 0, step))
    t0 = time.monotonic()
    with pytest.raises(NeighbourError, match=r"a -> b: no progress for 0 s"):
        channel.send(control(Phase.TRAIN, 0, 2))
    assert 0.25 < time.monotonic() - t0 < 2
    assert [channel.recv().step for _ in range(2)] == [0, 1]


def test_a_thread_channel_stops_waiting_when_another_stage_failed():
    abort = threading.Event()
    channel = open_channel("threads", PipelineConfig(timeout_s=30), name="x", abort=abort)
    threading.Timer(0.1, abort.set).start()
    with pytest.raises(NeighbourError, match="another stage failed"):
        channel.recv()


def _folder(tmp_path) -> RunFolder:
    return RunFolder.create(make_config(f"run.dir={tmp_path / 'run'}"))


def _failure(attempt, stage=1, step=30, cause="TrainingError: non-finite", secondary=False):
    return {"attempt": attempt, "stage": stage, "step": step, "cause": cause, "secondary": secondary}


def test_restarts_stop_at_the_limit_and_at_a_failure_that_repeats():
    assert restart_verdict([_failure(0)], Attempt(0), 3) is None
    assert "max_restarts = 0" in restart_verdict([_failure(0)], Attempt(0), 0)
    assert "3 restart(s) used" in restart_verdict([_failure(a, step=a) for a in range(4)], Attempt(3), 3)
    repeated = [_failure(0), _failure(1)]
    assert "for the same reason as in the attempt before" in restart_verdict(repeated, Attempt(1), 3)
    assert restart_verdict([_failure(0), _failure(1, step=31)], Attempt(1), 3) is None
    killed = [_failure(0, step=None, cause="died"), _failure(1, step=None, cause="died")]
    assert restart_verdict(killed, Attempt(1), 3) is None  # a kill has no step: not known to repeat
    # a resumed session (first attempt 1) neither counts nor compares the attempt of the one before
    assert restart_verdict(repeated, Attempt(1, first=1), 3) is None
    assert "1 restart(s) used" in restart_verdict(repeated, Attempt(2, first=1), 1)


def test_the_root_cause_is_the_stage_that_failed_not_the_neighbours_that_lost_it():
    failures = [_failure(0, stage=0, cause="lost stage 1", secondary=True), _failure(0, stage=1)]
    assert root_cause(failures, 0)["stage"] == 1
    failed = pickle.loads(pickle.dumps(StageFailed.of(1, 30, NeighbourError("lost stage 2"))))
    assert (failed.stage_id, failed.step, failed.secondary) == (1, 30, True)
    assert str(failed) == "stage 1 failed at step 30: NeighbourError: lost stage 2"



def test_a_resumed_run_does_not_take_earlier_failures_for_its_own(tmp_path, monkeypatch, capsys):
    """launch/torchrun.sh --resume after a run stopped on a repeated failure: this session's
    attempts are numbered on from the earlier ones, so its stage kills are recorded and named as
    its own, and they are not taken for a repeat of the earlier failure."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
    from ffpipe.backends import torchrun_launch

    folder = RunFolder.create(make_config(f"run.dir={tmp_path / 'run'}"))
    for attempt in (0, 1):  # the earlier session: the same failure twice, so it stopped
        folder.record_failure(1, 30, "TrainingError: non-finite", attempt)
    assert Attempt.first_of(folder) == Attempt(2, 2) and Attempt.first_of(None) == Attempt(0, 0)
    launches = []

    def killed_stage_1(argv):
        launches.append((os.environ["FFPIPE_ATTEMPT"], os.environ["FFPIPE_FIRST_ATTEMPT"]))
        raise ChildFailedError("ffpipe", {1: ProcessFailure(1, 123, -9, str(tmp_path / "none"))})

    monkeypatch.setattr("torch.distributed.run.main", killed_stage_1)
    for name in ("FFPIPE_ATTEMPT", "FFPIPE_FIRST_ATTEMPT"):  # the launcher sets them: undone after
        monkeypatch.setenv(name, "")
    assert torchrun_launch.main(["2", "--resume", str(folder)]) == 1
    err = capsys.readouterr().err
    assert launches == [("0", "2"), ("1", "2"), ("2", "2"), ("3", "2")]  # the first attempt, 3 restarts
    assert "3 restart(s) used" in err
    assert "same reason" not in err and "non-finite" not in err and err.count("killed by SIGKILL") == 4
    assert [f["attempt"] for f in folder.failures()] == [0, 1, 2, 3, 4, 5]


def test_metric_rows_are_replaced_whole(tmp_path, monkeypatch):
    folder = _folder(tmp_path)
    folder.write_stage_metrics(0, [{"phase": "train", "step": 1, "loss": 1.0}])

    real_write = folder.store.write

    def killed_while_writing(name, fill):
        def half(f):
            f.write(b"PAR1")  # the start of a file, as a SIGKILL mid-write leaves one
            raise KeyboardInterrupt
        real_write(name, half)

    monkeypatch.setattr(folder.store.__class__, "write", lambda self, name, fill: killed_while_writing(name, fill))
    with pytest.raises(KeyboardInterrupt):
        folder.write_stage_metrics(0, [{"phase": "train", "step": 2, "loss": 0.5}])
    assert [r["step"] for r in folder.read_stage_metrics(0, up_to_step=10)] == [1]
    assert sorted(p.name for p in (folder.path / "metrics").iterdir()) == ["stage-0.parquet"]  # no temporary left


def test_a_blocking_process_group_teardown_is_left_after_its_bound(monkeypatch, capsys):
    from ffpipe.transport import groups

    release = threading.Event()
    monkeypatch.setattr(groups.dist, "destroy_process_group", release.wait)  # blocks until set
    t0 = time.perf_counter()
    groups.destroy_groups(0.3)
    took = time.perf_counter() - t0
    release.set()  # let the daemon thread end
    assert 0.3 <= took < 5
    assert "the process groups were not torn down within 0.3 s" in capsys.readouterr().err


def test_a_prompt_teardown_says_nothing(monkeypatch, capsys):
    from ffpipe.transport import groups

    called = []
    monkeypatch.setattr(groups.dist, "destroy_process_group", lambda: called.append(1))
    groups.destroy_groups(5.0)
    assert called == [1] and capsys.readouterr().err == ""
