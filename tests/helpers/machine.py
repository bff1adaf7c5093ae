"""This machine's processes and sockets, read from /proc: a Ray head started and stopped as a
fresh machine would (its own HOME and temp folder), what a process tree listens on, the processes
a test kills."""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ffpipe.backends.ray_nodes import descendants, mentioning, state, terminate
from tests.helpers import REPO, low_ports

BIN = Path(sys.executable).parent
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# Ray settings a developer's shell may hold; a fresh machine has none of them.
RAY_SETTINGS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_API_SERVER_ADDRESS")


def processes_with(*needles: str, env_needle: str | None = None) -> list[int]:
    """Running pids (not stopped, not exited) whose command line holds every needle (and whose
    environment holds env_needle)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
            if all(n in cmdline for n in needles) and state(int(pid)) in "RSD" and (
                    env_needle is None or env_needle.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")):
                found.append(int(pid))
        except (OSError, IndexError):
            continue
    return found




def fresh_machine_env(tmp_path: Path) -> dict:
    """The environment of a fresh machine: a new HOME (no ~/.ray), no Ray settings, and a temp
    folder of its own. Ray's default folder is then $TMPDIR/ray, which holds what ray.init()
    looks for (ray_current_cluster), and its path marks every process of the clusters started
    here (`ray stop` would end every Ray on the machine, other tests' included)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in RAY_SETTINGS}
    env.update(HOME=str(home), TMPDIR=tempfile.mkdtemp(prefix="ffray", dir="/tmp"),  # short: Ray's sockets
               PATH=f"{BIN}:{os.environ['PATH']}", PYTHONPATH=str(REPO))
    return env


def start_head(env: dict, *options: str) -> None:
    """launch/ray_head.sh start on free ports (below the ephemeral range: tests.helpers.low_ports),
    its files in Ray's default folder ($TMPDIR/ray)."""
    ray_port, dashboard_port, client_port, agent_port = low_ports(24000, 4)
    env.update(RAY_PORT=str(ray_port), DASHBOARD_PORT=str(dashboard_port), RAY_AGENT_PORT=str(agent_port))
    head = subprocess.run(["bash", "launch/ray_head.sh", "start", f"--temp-dir={env['TMPDIR']}/ray",
                           f"--ray-client-server-port={client_port}", *options],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
    assert "Token authentication is disabled" not in head.stdout + head.stderr


def head_processes(env: dict) -> set[int]:
    """The head's processes: those naming its folder (GCS, raylet, dashboard, monitor) or its GCS
    address (the Ray Client server), and their children (agents and workers rename themselves)."""
    return descendants(mentioning(env["TMPDIR"], f"127.0.0.1:{env.get('RAY_PORT', '-')}"))


def stop_head(env: dict) -> None:
    """Every process of a cluster in this folder (a head, or a run's own cluster) stopped; then
    its folder goes."""
    left = terminate(lambda: head_processes(env), grace_s=5.0)
    assert not left, f"Ray processes of {env['TMPDIR']} still running: {left}"
    shutil.rmtree(env["TMPDIR"], ignore_errors=True)


def listening_sockets(pids: set[int]) -> list[tuple[int, str, Address, int]]:
    """Every listening TCP socket of these processes: (pid, command, bound address, port), found
    by matching their socket file descriptors to the LISTEN rows of /proc/net/tcp and tcp6."""
    listening = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A":  # TCP_LISTEN
                host, port = fields[1].split(":")
                listening[fields[9]] = (_address(host), int(port, 16))
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in listening:
                found.append((pid, command, *listening[link[8:-1]]))
    return found


def assert_loopback(sockets) -> None:
    """Some listening sockets, each bound to a loopback address (127.0.0.1, ::1)."""
    assert sockets, "no listening socket found"
    exposed = sorted({(c, str(a), n) for _, c, a, n in sockets if not a.is_loopback})
    assert not exposed, "listening beyond 127.0.0.1: " + "; ".join(f"{c.strip()} on {a} port {n}" for c, a, n in exposed)


def _address(hex_host: str) -> Address:
    """/proc/net/tcp{,6} print addresses as 32-bit words in host (little-endian) byte order;
    an IPv4 address on an IPv6 socket (::ffff:127.0.0.1) counts as that IPv4 address."""
    raw = b"".join(bytes.fromhex(hex_host[i:i + 8])[::-1] for i in range(0, len(hex_host), 8))
    address = ipaddress.ip_address(raw)
    return getattr(address, "ipv4_mapped", None) or address


# -- a Ray cluster of three nodes on this machine --------------------------------------------
def three_node_cluster(tmp_path: Path):
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


def node_processes(folder: Path) -> list[int]:
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


def kill_node(folder: Path) -> str:
    """SIGKILL every process of the node started in `folder`, as when its machine is gone;
    returns the node's id (from its raylet's command line)."""
    pids = node_processes(folder)
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
        pids = node_processes(folder)
    assert not pids, f"processes of {folder} still alive: {pids}"
    return node_id
