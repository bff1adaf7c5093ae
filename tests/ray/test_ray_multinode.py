"""A Ray cluster of three nodes on one machine (a head and two workers, each its own raylet, each
started in its own working directory, so that no process can rely on a local path another node
sees): the stage actors placed with SPREAD land on different nodes, keep the run in a `file://`
store (the stand-in for a bucket every node reaches), stop, resume from that store, and learn
exactly what the sequential trainer learns; a run that loses a whole node goes on, on the nodes
that are left, and still learns exactly that."""
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from ffpipe import config as config_mod
from ffpipe.backends import train
from ffpipe.run.folder import RunFolder
from tests.helpers import REPO
from tests.helpers.runs import (EXACT, LONG, assert_same_parameters, launch, run_ffpipe, summary,
                                    wait_for_checkpoint)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

CASE = EXACT + ["model.name=small_cnn", "model.granularity=layer", "train.max_steps=4"]
SPREAD = ["pipeline.backend=ray", "pipeline.stages=3", "pipeline.boundaries=[2, 4]", "pipeline.placement=SPREAD"]


def _cluster(tmp_path):
    """Head and two workers, each raylet (and so each of its worker processes) in its own folder."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read when ray is imported: set it first
    from ray.cluster_utils import Cluster

    home, dirs = os.getcwd(), [tmp_path / f"node-{k}" for k in range(3)]
    try:
        for k, folder in enumerate(dirs):
            folder.mkdir()
            os.chdir(folder)  # a raylet's workers start in the raylet's working directory
            if k == 0:
                cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
            else:
                cluster.add_node(num_cpus=3)  # each node could hold every stage: SPREAD alone spreads them
    finally:
        os.chdir(home)
    cluster.wait_for_nodes()
    return cluster, dirs


def _node_processes(folder: Path) -> list[int]:
    """The live processes of the node started in `folder`: its raylet, and the agents, workers and
    actors the raylet started (they all run in the raylet's working directory)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == str(folder):
                found.append(int(pid))
        except OSError:  # gone, or a zombie
            continue
    return found


def _kill_node(folder: Path) -> str:
    """SIGKILL every process of the node started in `folder`, as when its machine is gone;
    returns the node's id (from its raylet's command line)."""
    pids = _node_processes(folder)
    cmdlines = b" ".join(Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids).replace(b"\0", b" ")
    node_id = re.search(rb"/raylet --.*?--node_id=(\w+)", cmdlines).group(1).decode()
    deadline = time.time() + 10
    while pids and time.time() < deadline:  # again for anything the raylet started meanwhile
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
        pids = _node_processes(folder)
    assert not pids, f"processes of {folder} still alive: {pids}"
    return node_id


def test_spread_stage_actors_on_three_nodes_resume_from_shared_storage_and_match_the_sequential_trainer(tmp_path, capfd):
    ref = tmp_path / "sequential"
    run_ffpipe(CASE + [f"run.dir={ref}"])
    storage = (tmp_path / "bucket").as_uri()
    cluster, node_dirs = _cluster(tmp_path)
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


def test_a_run_that_loses_a_worker_node_restarts_on_the_nodes_left_and_matches_the_sequential_trainer(tmp_path):
    ref, run_dir = tmp_path / "sequential", tmp_path / "bucket" / "lost"
    run_ffpipe(LONG + [f"run.dir={ref}"], timeout=600)
    cluster, node_dirs = _cluster(tmp_path)
    proc = None
    try:
        sets = [a for o in LONG + SPREAD + [f"pipeline.address={cluster.address}", "run.dir=lost",
                                            f"run.storage={run_dir.parent.as_uri()}"] for a in ("--set", o)]
        # The driver joins with the cluster's own authentication: the cluster is started in this
        # process, whose RAY_* settings an earlier Ray test of the same worker may have changed
        # (token mode), and without token mode a token in ~/.ray would be asked for.
        auth = {k: v for k, v in os.environ.items() if k.startswith("RAY_AUTH")}
        proc = launch([sys.executable, "-m", "ffpipe", "train", *sets],
                      **{"RAY_AUTH_MODE": "disabled", **auth})
        wait_for_checkpoint(run_dir, 2, 40, proc, timeout=180)
        lost = _kill_node(node_dirs[2])  # a worker: the head holds the cluster's control plane
        killed_at = time.time()
        _, err = proc.communicate(timeout=400)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        cluster.shutdown()
    assert proc.returncode == 0, err[-4000:]
    assert "restarting (1 of 3)" in err and "resuming at step" in err
    result = summary(run_dir)
    primary = [r for r in result["restarts"] if not r["secondary"]]
    assert len(primary) == 1 and primary[0]["attempt"] == 0, result["restarts"]
    assert "the stage actor died" in primary[0]["cause"] and f"node {lost}" in primary[0]["cause"]
    nodes = [stage["node"] for stage in result["stages"]]  # where the restarted attempt ran
    assert result["completed"] and lost not in nodes and len(set(nodes)) == 2, (lost, nodes)
    assert_same_parameters(ref, run_dir)
    print(f"ray: node lost to the end of the run {time.time() - killed_at:.1f} s")
