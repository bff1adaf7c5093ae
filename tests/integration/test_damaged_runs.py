"""Run folders hurt between a stop and a resume (the findings of issue 26, as regression tests): a
flipped bit in the newest checkpoint is named and the run resumes from the step before, ending bit
for bit where an uninterrupted run ends; a run whose only complete step is damaged stops instead of
training over it (run.start_over trains it again on purpose); another model's checkpoints are one
line naming the unit and the shapes."""
import shutil

import pytest

from ffpipe.run.checkpoints import Saved, complete_steps, saved
from ffpipe.run.folder import RunFolder
from tests.helpers.chaos import flip_tensor_bytes
from tests.helpers.runs import EXACT, assert_same_parameters, run_ffpipe, summary

pytestmark = pytest.mark.slow

# the finding's run, small: 12 steps, a checkpoint every 2, stopped after 6
RUN = EXACT + ["model.name=small_cnn", "model.granularity=block", "train.epochs=2", "run.checkpoint_every=2"]


def _stopped(tmp_path, name: str, *extra: str):
    run_dir = tmp_path / name
    run_ffpipe(RUN + [f"run.dir={run_dir}", "run.stop_after_step=6", *extra])
    return run_dir


def _complete(run_dir) -> dict:
    files = saved(RunFolder(run_dir))
    return complete_steps(files, max(f.last for f in files) + 1)


def test_a_flipped_bit_in_the_newest_checkpoint_is_named_and_the_run_resumes_bit_for_bit(tmp_path):
    whole = tmp_path / "whole"
    run_ffpipe(RUN + [f"run.dir={whole}"])
    run_dir = _stopped(tmp_path, "hurt")
    assert sorted(_complete(run_dir)) == [4, 6]  # the two newest complete steps are kept
    flip_tensor_bytes(run_dir / Saved(6, 0, 3).name)
    resumed = run_ffpipe([], resume=run_dir)
    assert f"{Saved(6, 0, 3).name} is damaged" in resumed.stderr and "resuming at step 4" in resumed.stderr
    assert_same_parameters(whole, run_dir)
    assert summary(run_dir)["completed"]


def test_a_run_whose_only_complete_step_is_damaged_stops_and_start_over_trains_it_again(tmp_path):
    run_dir = _stopped(tmp_path, "hurt", "run.checkpoint_every=6")
    assert sorted(_complete(run_dir)) == [6]
    flip_tensor_bytes(run_dir / Saved(6, 0, 3).name)
    refused = run_ffpipe([], resume=run_dir, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "cannot go on: every complete step has a damaged file" in refused.stderr
    assert "--set run.start_over=true" in refused.stderr
    assert (run_dir / Saved(6, 0, 3).name).exists()  # nothing was trained over
    again = run_ffpipe(["run.start_over=true"], resume=run_dir)
    assert "resuming at step" not in again.stderr and summary(run_dir)["completed"]


@pytest.mark.parametrize("other, says", [
    (["model.width=8"], r"the checkpoint of unit 0 at step 6 does not fit this model: \S+ is \[8, "),
    (["model.name=resnet18"], "its checkpoints hold units 0-8 but this model has 4: they are another model's"),
])
def test_another_models_checkpoints_are_one_line_naming_what_does_not_fit(tmp_path, other, says):
    import re

    run_dir, foreign = _stopped(tmp_path, "mine"), _stopped(tmp_path, "other", *other)
    shutil.rmtree(run_dir / "checkpoints")
    shutil.copytree(foreign / "checkpoints", run_dir / "checkpoints")
    done = run_ffpipe([], resume=run_dir, check=False)
    assert done.returncode == 2 and re.search(says, done.stderr), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 3
