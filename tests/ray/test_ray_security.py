"""The Ray side, locked down, on what a fresh machine has (no ~/.ray, no Ray settings): the local
cluster ffpipe starts listens on 127.0.0.1 only and requires Ray's token, and another head on the
machine does not stop a local run (ffpipe starts its own cluster)."""
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, free_port
from tests.helpers.runs import summary
from tests.helpers.machine import (assert_loopback, descendants, fresh_machine_env, listening_sockets,
                                mentioning, start_head, stop_head)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

# A driver that starts ffpipe's local cluster, holds one actor, asks the GCS for its cluster id
# without and with the token, writes what it saw and waits for its stdin to close.
DRIVER = """
import json, os, sys
from pathlib import Path
import grpc
from ffpipe import config
from ffpipe.backends.ray_cluster import connect

started = connect(config.load(None, ["pipeline.backend=ray", "pipeline.stages=2"]), 2)
import ray
from ray._raylet import AuthenticationMode, get_authentication_mode
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc


class Probe:
    def pid(self):
        return os.getpid()


def gcs_answer(metadata):
    channel = grpc.insecure_channel(ray.get_runtime_context().gcs_address)
    stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
    try:
        stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=10, metadata=metadata)
        return "OK"
    except grpc.RpcError as err:
        return err.code().name


probe = ray.remote(num_cpus=1)(Probe).remote()
token = (Path.home() / ".ray" / "auth_token").read_text().strip()
seen = {"started": started, "actor": ray.get(probe.pid.remote()), "node": ray.util.get_node_ip_address(),
        "token_mode": get_authentication_mode() == AuthenticationMode.TOKEN,
        "without_token": gcs_answer(()), "with_token": gcs_answer((("authorization", "Bearer " + token),))}
Path(sys.argv[1]).write_text(json.dumps(seen))
sys.stdin.read()
ray.shutdown()
"""

# connect() to each address in turn, with a 5 s deadline: what happened, and after how long.
JOIN = """
import sys, time
from ffpipe import config
from ffpipe.backends.ray_cluster import connect
from ffpipe.errors import FFPipeError

for address in sys.argv[1:]:
    t0 = time.monotonic()
    try:
        connect(config.load(None, ["pipeline.backend=ray", "pipeline.address=" + address, "pipeline.timeout_s=5"]), 2)
        import ray
        print("joined", ray.cluster_resources().get("CPU"), ray.util.get_node_ip_address(), flush=True)
    except FFPipeError as err:
        print(type(err).__name__, f"after {time.monotonic() - t0:.0f} s:", err, flush=True)
"""


def test_ffpipes_own_cluster_listens_on_loopback_only_and_requires_the_token(tmp_path):
    env = fresh_machine_env(tmp_path)
    seen_file, log = tmp_path / "seen.json", tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(seen_file)], cwd=REPO, env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    try:
        deadline = time.time() + 120
        while not seen_file.exists() and driver.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert seen_file.exists(), log.read_text()[-3000:]
        seen = json.loads(seen_file.read_text())
        assert seen["started"] and seen["node"] == "127.0.0.1"
        # The cluster: the driver and everything below it (GCS, raylet, agents, workers), and
        # anything else naming its folder.
        cluster = descendants({driver.pid} | mentioning(env["TMPDIR"]))
        sockets = listening_sockets(cluster)
        assert_loopback(sockets)
        owners = {pid for pid, *_ in sockets}
        commands = " ".join(command for _, command, *_ in sockets)
        assert {driver.pid, seen["actor"]} <= owners and "gcs_server" in commands and "raylet" in commands
        # Token authentication: on, with a token only this user can read, which the GCS requires.
        token = Path(env["HOME"]) / ".ray" / "auth_token"
        assert seen["token_mode"] and token.stat().st_mode & 0o077 == 0
        assert (seen["without_token"], seen["with_token"]) == ("UNAUTHENTICATED", "OK")
        driver.communicate(input="", timeout=60)
        assert driver.returncode == 0, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
        stop_head(env)  # whatever of this cluster is left (nothing, normally)


def test_another_head_on_the_machine_does_not_stop_a_local_run(tmp_path):
    """`ffpipe train` with the Ray backend and no address, while a head from launch/ray_head.sh
    runs: it starts its own cluster, on 127.0.0.1 only, and finishes."""
    env = fresh_machine_env(tmp_path)
    try:
        start_head(env, "--num-cpus=1")
        # What a plain ray.init() would join (and then refuse num_cpus): this head.
        found = (Path(env["TMPDIR"]) / "ray" / "ray_current_cluster").read_text().strip()
        assert found == f"127.0.0.1:{env['RAY_PORT']}"
        # The Ray transport: no torch.distributed rendezvous (see the next test), only Ray.
        log, sockets = _train_and_watch(env, tmp_path / "run", "pipeline.transport=ray")
        assert "Started a local Ray instance" in log and "Connecting to existing Ray cluster" not in log
        assert_loopback(sockets)
        # The head itself, named by its loopback address, is joined on loopback (its 1 CPU).
        assert _join(env, f"127.0.0.1:{env['RAY_PORT']}") == ["joined 1.0 127.0.0.1"]
    finally:
        stop_head(env)


def test_the_p2p_rendezvous_of_the_stage_actors_listens_on_loopback_only(tmp_path):
    env = fresh_machine_env(tmp_path)
    try:
        _, sockets = _train_and_watch(env, tmp_path / "run", "pipeline.transport=p2p")
        assert_loopback(sockets)
    finally:
        stop_head(env)


def _train_and_watch(env: dict, run_dir: Path, *overrides: str) -> tuple[str, set]:
    """A 4-step `ffpipe train` on 2 Ray stage actors; every listening socket of its processes (the
    driver and all below it), listed every 0.1 s while it runs. Returns its stderr and them."""
    sets = ["pipeline.backend=ray", "pipeline.stages=2", "data.name=synthetic", "train.max_steps=4",
            "train.device=cpu", "run.plots=false", "run.progress=false", f"run.dir={run_dir}", *overrides]
    sockets, stages, log = set(), set(), run_dir.parent / "stderr.txt"
    with log.open("w") as stderr:
        run = subprocess.Popen([sys.executable, "-m", "ffpipe", "train", *[a for o in sets for a in ("--set", o)]],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.time() + 240
            while run.poll() is None and time.time() < deadline:
                cluster = descendants({run.pid})
                stages |= cluster & mentioning("ray::StageWorker")
                sockets |= set(listening_sockets(cluster))
                time.sleep(0.1)
        finally:
            run.kill()
            run.wait()
    assert run.returncode == 0, log.read_text()[-3000:]
    assert len(stages) == 2, f"the two stage actors were not seen: {stages}"
    result = summary(run_dir)
    assert result["backend"] == "ray" and result["num_stages"] == 2 and result["completed"]
    return log.read_text(), sockets


def test_an_address_without_a_ray_head_fails_within_the_deadline(tmp_path):
    env = fresh_machine_env(tmp_path)
    try:
        with socket.socket() as not_ray:  # accepts connections, never answers as a Ray head
            not_ray.bind(("127.0.0.1", 0))
            not_ray.listen()
            silent, refused = f"127.0.0.1:{not_ray.getsockname()[1]}", f"127.0.0.1:{free_port()}"
            said = _join(env, refused, "nonsense", silent)
        assert said[0].startswith(f"PipelineError after 0 s: nothing answers at {refused}"), said
        assert said[1].startswith("ConfigError after 0 s: a Ray address is host:port, not 'nonsense'"), said
        # the deadline, plus importing Ray on the first join (CI, beside the other test worker, read 7 s once)
        assert re.match(rf"PipelineError after [5-9] s: cannot join the Ray cluster at pipeline.address = "
                        rf"'{silent}' \(no answer within pipeline.timeout_s = 5 s\)", said[2]), said
    finally:
        stop_head(env)  # nothing of Ray to stop here: its folder goes


def _join(env: dict, *addresses: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", JOIN, *addresses], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()
