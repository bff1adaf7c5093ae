"""Stage replicas on CPU (gloo): a replicated pipeline learns what the unreplicated one learns.

Replicas differ from the unreplicated stage only in the order of floating-point reductions
(batch-norm moments combined across replicas, gradients summed), so parameters agree to within
1e-5 after several SGD steps. Adam divides each gradient by its running magnitude, so a
reduction-order difference in a near-zero gradient becomes a visible (lr-sized) step: with AdamW
the bound is looser.
"""
import os

import pytest

from ffpipe import config as config_mod
from ffpipe.backends import train
from tests.conftest import REPO
from tests.pipeline_helpers import EXACT, assert_same_parameters, run_ffpipe, summary

pytestmark = pytest.mark.slow

COMMON = EXACT + ["model.name=small_cnn", "model.granularity=layer", "train.max_steps=6",
                  "train.eval_batch_size=30"]
SPLIT = ["pipeline.boundaries=[3]"]
SGD = ["train.optimizer=sgd", "train.lr=0.05"]


def _sequential(tmp_path, extra: list[str]):
    ref = tmp_path / "sequential"
    run_ffpipe(COMMON + extra + [f"run.dir={ref}"])
    return ref


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


@pytest.mark.xdist_group("ray")
def test_ray_replicas_match_the_unreplicated_run(tmp_path):
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    ref = _sequential(tmp_path, SGD)
    ray.init(address="local", num_cpus=3, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}})
    try:
        cfg = config_mod.load(None, COMMON + SPLIT + SGD + ["pipeline.backend=ray", "pipeline.replicas=[2, 1]",
                                                    f"run.dir={tmp_path / 'ray'}"])
        run_dir, result = train(cfg)
    finally:
        ray.shutdown()
    assert_same_parameters(ref, run_dir, atol=1e-5)
    assert result["replicas"] == [2, 1] and result["completed"]
    assert result["test_accuracy_per_unit"] == summary(ref)["test_accuracy_per_unit"]


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
