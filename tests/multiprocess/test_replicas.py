"""Stage replicas on CPU (gloo): a replicated pipeline learns what the unreplicated one learns.

Replicas differ from the unreplicated stage only in the order of floating-point reductions
(batch-norm moments combined across replicas, gradients summed), so parameters agree to within
1e-5 after several SGD steps. Adam divides each gradient by its running magnitude, so a
reduction-order difference in a near-zero gradient becomes a visible (lr-sized) step: with AdamW
the bound is looser.
"""
import pytest

from tests.helpers.runs import REPLICA_RUN as COMMON
from tests.helpers.runs import REPLICA_SPLIT as SPLIT
from tests.helpers.runs import SGD, assert_same_parameters, run_ffpipe, sequential_run, summary

pytestmark = pytest.mark.slow


def _sequential(tmp_path, extra: list[str]):
    return sequential_run(tmp_path / "sequential", COMMON + extra)


@pytest.mark.parametrize("replicas, batch", [([2, 2], 16), ([3, 2], 17)])
def test_torchrun_replicas_match_the_unreplicated_run(tmp_path, replicas, batch):
    extra = SGD + [f"train.batch_size={batch}"]
    ref = _sequential(tmp_path, extra)
    rep = tmp_path / "replicated"
    run_ffpipe(COMMON + SPLIT + extra + [f"run.dir={rep}"], replicas=replicas)
    assert_same_parameters(ref, rep, atol=1e-5)
    a, b = summary(ref), summary(rep)
    assert b["replicas"] == replicas and b["history"][-1]["test_images"] == 40
    assert b["test_accuracy_per_unit"] == a["test_accuracy_per_unit"]
    # the logged training loss is the whole batch's, as the unreplicated stage logs it
    assert [len(s.get("replicas") or [s]) for s in b["stages"]] == replicas


def test_torchrun_replicas_with_adamw_stay_close(tmp_path):
    ref = _sequential(tmp_path, [])
    rep = tmp_path / "replicated"
    run_ffpipe(COMMON + SPLIT + [f"run.dir={rep}"], replicas=[2, 2])
    assert_same_parameters(ref, rep, atol=1e-4)


def test_torchrun_auto_replicas_fill_the_processes_and_still_match(tmp_path):
    ref = _sequential(tmp_path, SGD)
    rep = tmp_path / "auto"
    run_ffpipe(COMMON + SPLIT + SGD + [f"run.dir={rep}", "pipeline.stages=2", "pipeline.replicas=auto"],
               processes=3)  # the run shares the three out by measured cost
    assert_same_parameters(ref, rep, atol=1e-5)
    s = summary(rep)
    assert sorted(s["replicas"]) == [1, 2]
    assert all(st["predicted_step_s"] > 0 for st in s["stages"])  # the costs it balanced on


def test_torchrun_auto_replicas_balance_the_split_with_them_and_still_match(tmp_path):
    """No boundaries: the split and the replicas are chosen together on measured costs (a
    replicated stage may take more units); the learning is still the sequential run's."""
    ref = _sequential(tmp_path, SGD)
    rep = tmp_path / "auto_split"
    run_ffpipe(COMMON + SGD + [f"run.dir={rep}", "pipeline.stages=2", "pipeline.replicas=auto"], processes=3)
    assert_same_parameters(ref, rep, atol=1e-5)
    s = summary(rep)
    assert sorted(s["replicas"]) == [1, 2]
    units = [st["units"] for st in s["stages"]]
    assert sum(len(u) for u in units) == len(s["test_accuracy_per_unit"]) and all(units)
