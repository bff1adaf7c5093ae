"""`ray_nodes.py port`: the job agent's port launch/ray_head.sh gives a head when RAY_AGENT_PORT is unset."""
import socket
import subprocess
import sys
from pathlib import Path

from ffpipe.backends import ray_nodes

SCRIPT = Path(ray_nodes.__file__)


def test_the_port_is_free_and_below_the_systems_ephemeral_range():
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(5):
        port = ray_nodes.quiet_port()
        assert 20000 <= port < ephemeral
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # nothing holds it


def test_a_port_something_listens_on_is_passed_over(monkeypatch):
    monkeypatch.setattr(ray_nodes.random, "shuffle", lambda ports: None)  # tried in order
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        held.listen()
        assert ray_nodes.quiet_port(low=taken) > taken


def test_the_script_prints_the_port_for_the_shell():
    done = subprocess.run([sys.executable, str(SCRIPT), "port"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert 20000 <= int(done.stdout) < 65536
