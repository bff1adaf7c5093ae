"""The Ray backend with CPU actors: bit-identical to the sequential trainer on both transports,
and a failing stage named within a bounded time."""
import os
import time

import pytest

from ffpipe import config as config_mod
from ffpipe.backends import train
from ffpipe.errors import PipelineError
from tests.helpers import REPO
from tests.helpers.runs import EXACT, assert_same_parameters, run_ffpipe, summary

# One xdist worker runs every Ray test in turn: they start and stop local clusters.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module (the backend joins it instead of starting its own)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read when ray is imported: set it first
    import ray

    ray.init(address="local", num_cpus=3, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The sequential trainer on the model the Ray runs split (one thread, as Ray actors use)."""
    out = tmp_path_factory.mktemp("ref") / "sequential"
    run_ffpipe(EXACT + ["model.name=small_cnn", "model.granularity=layer", "train.max_steps=4",
                        f"run.dir={out}"])
    return out


@pytest.mark.parametrize("stages, transport, tensors", [
    (2, "p2p", "auto"), (3, "p2p", "auto"),
    (2, "ray", "object_store"), (3, "ray", "object_store"), (3, "ray", "gloo"),
])
def test_ray_actors_match_the_sequential_trainer_bit_for_bit(ray_cluster, reference, tmp_path,
                                                             stages, transport, tensors):
    splits = {2: "[2]", 3: "[2, 4]"}
    cfg = config_mod.load(None, EXACT + [
        "model.name=small_cnn", "model.granularity=layer", "train.max_steps=4", "pipeline.backend=ray",
        f"pipeline.stages={stages}", f"pipeline.boundaries={splits[stages]}",
        f"pipeline.transport={transport}", f"pipeline.ray_tensor_transport={tensors}",
        f"run.dir={tmp_path / 'ray'}"])
    run_dir, result = train(cfg)
    assert_same_parameters(reference, run_dir)
    assert result["test_accuracy_per_unit"] == summary(reference)["test_accuracy_per_unit"]
    assert [s["stage"] for s in result["stages"]] == list(range(stages))
    assert (run_dir / "metrics" / f"stage-{stages - 1}.parquet").exists()


MICRO = ["model.name=small_cnn", "model.granularity=layer", "train.max_steps=4", "train.batch_size=18",
         "train.microbatches=4"]  # 18 rows as 5, 5, 4, 4


@pytest.fixture(scope="module")
def micro_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("micro") / "sequential"
    run_ffpipe(EXACT + MICRO + [f"run.dir={out}"])
    return out


@pytest.mark.parametrize("transport", ["p2p", "ray"])
def test_ray_actors_with_microbatches_match_the_sequential_trainer_bit_for_bit(ray_cluster, micro_reference,
                                                                              tmp_path, transport):
    cfg = config_mod.load(None, EXACT + MICRO + [
        "pipeline.backend=ray", "pipeline.stages=2", "pipeline.boundaries=[2]",
        f"pipeline.transport={transport}", f"run.dir={tmp_path / 'ray'}"])
    run_dir, result = train(cfg)
    assert_same_parameters(micro_reference, run_dir)
    assert result["steps"] == 4


def test_a_failing_stage_actor_is_named_and_the_job_ends(ray_cluster, tmp_path):
    cfg = config_mod.load(None, EXACT + ["model.name=small_cnn", "train.lr=1e12", "train.warmup_fraction=0",
                                         "train.max_steps=6", "pipeline.backend=ray", "pipeline.stages=2",
                                         "pipeline.timeout_s=60", "pipeline.max_restarts=0",
                                         f"run.dir={tmp_path / 'r'}"])
    t0 = time.time()
    with pytest.raises(PipelineError, match=r"stage \d failed at step \d+: TrainingError: the loss of unit \d+ "
                                            r"\(stage \d\) became non-finite.*no automatic restart"):
        train(cfg)
    assert time.time() - t0 < 60
    # No actor or placement group left behind: all the cluster's CPUs come back.
    deadline = time.time() + 20
    while ray_cluster.available_resources().get("CPU", 0) < 3 and time.time() < deadline:
        time.sleep(0.2)
    assert ray_cluster.available_resources().get("CPU", 0) == 3
