"""The README's cluster path as written, on one machine: launch/ray_cluster.sh starts a head (the
token made on a fresh HOME) on this machine's own address (as on a private network: a worker Ray
starts takes a node's routable address, and a head on 127.0.0.1 would not see it) and a worker
node (another HOME, which gets the token copied to it), each with its own temp folder and ports;
launch/ray_submit.sh sends a run whose stages land on both nodes; `stop` ends the worker, then
the head, and nothing else: another Ray head on the machine, which these scripts did not start,
still runs."""
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ffpipe.backends.ray_nodes import descendants, mentioning, node_processes, terminate
from ffpipe.run.folder import RunFolder
from tests.helpers import REPO, low_ports
from tests.helpers.machine import fresh_machine_env, head_processes, start_head, stop_head

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

NODE_PORTS = ("NODE_MANAGER_PORT", "OBJECT_MANAGER_PORT", "AGENT_GRPC_PORT", "AGENT_HTTP_PORT",
              "RUNTIME_ENV_PORT", "METRICS_PORT")


def _script(env: dict, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "launch/ray_cluster.sh", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)
    assert (done.returncode == 0) == ok, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _node_env(env: dict, role: str, worker_ports: int) -> dict:
    """A node of its own: its ports free on this machine (its workers' range, then the others
    above it), its temp folder, and (a worker) its HOME."""
    ports = low_ports(worker_ports + 100, len(NODE_PORTS))
    node = dict(env, RAY_TEMP_DIR=f"{env['TMPDIR']}/{role}", WORKER_PORTS=f"{worker_ports}-{worker_ports + 99}",
                **{name: str(port) for name, port in zip(NODE_PORTS, ports)})
    if role == "worker":
        node["HOME"] = str(Path(env["HOME"]).parent / "worker-home")
        Path(node["HOME"]).mkdir()
    return node


def _own_address() -> str:
    """The address this machine reaches others from (no packet is sent: a UDP socket's route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def test_a_head_and_a_worker_from_the_scripts_run_a_job_on_both_and_stop_only_themselves(tmp_path):
    address = _own_address()
    if address.startswith("127."):
        pytest.skip("this machine has no address beside 127.0.0.1 for a second Ray node to join")
    env = fresh_machine_env(tmp_path)
    ray_port, dashboard_port, client_port = low_ports(20900, 3)
    env.update(RAY_PORT=str(ray_port), DASHBOARD_PORT=str(dashboard_port), CLIENT_PORT=str(client_port),
               PYTHON_ON_HEAD=sys.executable, RUN_DIR="spread")
    (tmp_path / "other").mkdir()
    bystander = fresh_machine_env(tmp_path / "other")  # another user's head, say
    # Every port below Linux's ephemeral range (32768-60999), from which Ray draws the ports it
    # picks itself: its agent once drew 41017 inside a worker range of 41000-41099 and the head
    # refused to start.
    head, worker = _node_env(env, "head", 21000), _node_env(env, "worker", 21200)
    try:
        start_head(bystander, "--num-cpus=0", "--include-dashboard=false")
        started = _script(head, "head", address, "--num-cpus=2").stdout
        token = Path(env["HOME"]) / ".ray" / "auth_token"
        assert "made the cluster's token" in started and token.stat().st_mode & 0o077 == 0
        assert f"launch/ray_cluster.sh worker {address}" in started
        refused = _script(worker, "worker", address, ok=False).stderr  # no token on that node yet
        assert f"no token to join {address}:" in refused and "auth_token" in refused
        (Path(worker["HOME"]) / ".ray").mkdir(mode=0o700)
        shutil.copy2(token, Path(worker["HOME"]) / ".ray" / "auth_token")  # what the printed scp does
        _script(worker, "worker", address, "--num-cpus=2")
        store = (tmp_path / "bucket").as_uri()
        submitted = subprocess.run(
            ["bash", "launch/ray_submit.sh", "--address", f"http://{address}:{env['DASHBOARD_PORT']}",
             "--set", "data.name=synthetic", "--set", "train.max_steps=6", "--set", "pipeline.stages=2",
             "--set", "train.device=cpu", "--set", "run.plots=false", "--set", "pipeline.placement=SPREAD",
             "--set", f"run.storage={store}"], cwd=REPO, env=head, capture_output=True, text=True, timeout=300)
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        summary = RunFolder.open(f"{store}/spread").summary()
        assert summary["completed"] and len({stage["node"] for stage in summary["stages"]}) == 2  # both nodes

        records = Path(worker["HOME"]) / ".ray" / "ffpipe-nodes"
        worker_session = next(records.iterdir()).read_text().split()[0]
        assert node_processes(worker_session)
        assert "stopped the Ray worker" in _script(worker, "stop").stdout
        assert not node_processes(worker_session) and head_processes(head)  # the head still runs
        assert "stopped the Ray head" in _script(head, "stop", "head").stdout
        client = f"--address={address}:{env['RAY_PORT']}"  # the head's Ray Client server
        assert not head_processes(head) and not mentioning(client) and head_processes(bystander)  # only theirs
        nothing = _script(head, "stop", ok=False).stderr
        assert "no Ray node of head/worker started by the launch scripts" in nothing
    finally:
        terminate(lambda: head_processes(head) | descendants(mentioning(f"--address={address}:{env['RAY_PORT']}")),
                  grace_s=5.0)
        stop_head(bystander)
