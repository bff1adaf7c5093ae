"""Stage replicas on Ray actors (CPU, gloo): a replicated pipeline learns what the unreplicated
sequential run learns, to within the reduction order of the synced batch norm and gradient sum."""
import os

import pytest

from ffpipe import config as config_mod
from ffpipe.backends import train
from tests.helpers import REPO
from tests.helpers.runs import REPLICA_RUN, REPLICA_SPLIT, SGD, assert_same_parameters, sequential_run, summary

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


def test_ray_replicas_match_the_unreplicated_run(tmp_path):
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    ref = sequential_run(tmp_path / "sequential", REPLICA_RUN + SGD)
    ray.init(address="local", num_cpus=3, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}})
    try:
        cfg = config_mod.load(None, REPLICA_RUN + REPLICA_SPLIT + SGD + [
            "pipeline.backend=ray", "pipeline.replicas=[2, 1]", f"run.dir={tmp_path / 'ray'}"])
        run_dir, result = train(cfg)
    finally:
        ray.shutdown()
    assert_same_parameters(ref, run_dir, atol=1e-5)
    assert result["replicas"] == [2, 1] and result["completed"]
    assert result["test_accuracy_per_unit"] == summary(ref)["test_accuracy_per_unit"]
