"""Streamed shards under torchrun: two stage processes learn bit for bit what the sequential
trainer learns; two replicas of stage 0 each decode their own rows of every batch and the run
stays within float reduction order of it (as unstreamed replicas do: test_replicas.py)."""
import pytest

from tests.helpers.runs import SGD, assert_same_parameters, run_ffpipe, sequential_run, summary
from tests.helpers.streams import shards, stream_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return shards(tmp_path_factory.mktemp("stream_torchrun"))


@pytest.mark.parametrize("extra", [[], ["data.val_fraction=0.25", "data.train_subset=12", "data.cutout=4",
                                         "algo.vote=weighted"]], ids=["all", "subsets"])
def test_torchrun_stages_learn_what_the_sequential_trainer_learns_from_a_stream(root, tmp_path, extra):
    ref = sequential_run(tmp_path / "sequential", stream_run(root) + extra)
    run_ffpipe(stream_run(root) + extra + [f"run.dir={tmp_path / 'torchrun'}"], stages=2)
    assert_same_parameters(ref, tmp_path / "torchrun")
    if extra:  # the weights chosen on the streamed validation part, the same in both
        assert summary(ref)["train_images"] == 36
        assert summary(ref)["history"] == summary(tmp_path / "torchrun")["history"]


def test_stage_zero_replicas_split_the_stream_and_match_the_unreplicated_run(root, tmp_path):
    run = stream_run(root) + SGD + ["train.max_steps=6"]  # the steps of test_replicas.py
    ref = sequential_run(tmp_path / "sequential", run)
    rep = tmp_path / "replicated"
    run_ffpipe(run + ["pipeline.boundaries=[3]", f"run.dir={rep}"], replicas=[2, 1])
    assert_same_parameters(ref, rep, atol=1e-5)
    assert summary(rep)["replicas"] == [2, 1]
    assert summary(rep)["history"][-1]["test_images"] == 18
