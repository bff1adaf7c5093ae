"""A Ray cluster of three nodes on one machine (a head and two workers, each its own raylet): the
stage actors placed with SPREAD land on different nodes and learn exactly what the sequential
trainer learns. (What it does not cover yet: nodes without a shared disk; every node here sees
the same run folder.)"""
import os

import pytest

from ffpipe import config as config_mod
from ffpipe.backends import train
from tests.conftest import REPO
from tests.pipeline_helpers import EXACT, assert_same_parameters, run_ffpipe

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

CASE = EXACT + ["model.name=small_cnn", "model.granularity=layer", "train.max_steps=4"]


def test_spread_stage_actors_run_on_three_nodes_and_match_the_sequential_trainer(tmp_path):
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read when ray is imported: set it first
    import ray
    from ray.cluster_utils import Cluster

    ref = tmp_path / "sequential"
    run_ffpipe(CASE + [f"run.dir={ref}"])
    # Each node could hold every stage: the placement strategy alone spreads them.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=3)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}})
        assert len([n for n in ray.nodes() if n["Alive"]]) == 3
        cfg = config_mod.load(None, CASE + ["pipeline.backend=ray", "pipeline.stages=3",
                                            "pipeline.boundaries=[2, 4]", "pipeline.placement=SPREAD",
                                            f"run.dir={tmp_path / 'spread'}"])
        run_dir, result = train(cfg)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert len({stage["node"] for stage in result["stages"]}) == 3  # one stage per node
    assert_same_parameters(ref, run_dir)
