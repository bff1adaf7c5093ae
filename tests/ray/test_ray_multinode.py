"""A Ray cluster of three nodes on one machine (a head and two workers, each its own raylet, each
started in its own working directory, so that no process can rely on a local path another node
sees): the stage actors placed with SPREAD land on different nodes, keep the run in a `file://`
store (the stand-in for a bucket every node reaches), stop, resume from that store, and learn
exactly what the sequential trainer learns. A run that loses a whole node: tests/ray/test_chaos_ray.py."""

import pytest

from ffpipe import config as config_mod
from ffpipe.backends import train
from ffpipe.run.folder import RunFolder
from tests.helpers import REPO
from tests.helpers.machine import three_node_cluster
from tests.helpers.runs import EXACT, assert_same_parameters, run_ffpipe

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

CASE = EXACT + ["model.name=small_cnn", "model.granularity=layer", "train.max_steps=4"]
SPREAD = ["pipeline.backend=ray", "pipeline.stages=3", "pipeline.boundaries=[2, 4]", "pipeline.placement=SPREAD"]


def test_spread_stage_actors_on_three_nodes_resume_from_shared_storage_and_match_the_sequential_trainer(tmp_path, capfd):
    ref = tmp_path / "sequential"
    run_ffpipe(CASE + [f"run.dir={ref}"])
    storage = (tmp_path / "bucket").as_uri()
    cluster, node_dirs = three_node_cluster(tmp_path)
    import ray  # after _cluster(): it sets what ray reads at import

    try:
        ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}})
        assert len([n for n in ray.nodes() if n["Alive"]]) == 3
        cfg = config_mod.load(None, CASE + SPREAD + [f"run.storage={storage}", "run.dir=spread",
                                                     "run.checkpoint_every=1", "run.stop_after_step=2"])
        location, stopped = train(cfg)
        assert location == f"{storage}/spread" and not stopped["completed"]
        capfd.readouterr()
        _, result = train(RunFolder.open(location).resume_config([]), resume=location)
        resumed = capfd.readouterr().err
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert f"run folder {location}, " in resumed and "resuming at step 2" in resumed
    assert result["completed"] and len({stage["node"] for stage in result["stages"]}) == 3  # one stage per node
    assert_same_parameters(ref, location)
    assert all(not any(folder.iterdir()) for folder in node_dirs)  # nothing written beside any node
