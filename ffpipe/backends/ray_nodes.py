"""The Ray nodes that launch/ray_head.sh and launch/ray_cluster.sh start on this machine, and how
to stop exactly those: never every Ray on the machine, as `ray stop` does (other users' clusters,
an ffpipe run's own local cluster, the other node of a test).

A node is known by its session folder (<temp dir>/session_<time>_<pid>), which the command line
of each of its own processes names (GCS server, raylet, dashboard, monitors); the Ray Client
server of a head is known by its GCS address; agents and workers rename themselves, and are
found as those processes' children. At start the scripts record the session in
~/.ray/ffpipe-nodes/<role>-<port> (`record`); `stop` ends what a record names and removes it.
`port` prints a free port for a head's job agent (`quiet_port`).

Standard library only, run as a file (`python3 ffpipe/backends/ray_nodes.py ...`), so a node
needs no more than the Python that runs Ray. Linux (/proc)."""
from __future__ import annotations

import os
import random
import signal
import socket
import sys
import time
from pathlib import Path

RECORDS = Path.home() / ".ray" / "ffpipe-nodes"


def pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the parenthesised name (which may hold spaces and
    parentheses): the state, then the parent, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def state(pid: int) -> str:
    """R running, S/D sleeping, T stopped, Z exited."""
    return _stat_fields(pid)[0]


def parent(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def ancestry() -> set[int]:
    """This process and its parents (their command lines may name what they are looking for)."""
    found, pid = set(), os.getpid()
    while pid > 1:
        found.add(pid)
        pid = parent(pid)
    return found


def mentioning(*markers: str, every: tuple[str, ...] = ()) -> set[int]:
    """Processes whose command line holds one of `markers` (or all of `every`), never this one
    or its parents."""
    found, mine = set(), ancestry()
    for pid in set(pids()) - mine:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        except OSError:
            continue
        if any(m in cmdline for m in markers) or (every and all(m in cmdline for m in every)):
            found.add(pid)
    return found


def descendants(roots: set[int]) -> set[int]:
    """The roots and every process below them."""
    children: dict[int, list[int]] = {}
    for pid in pids():
        try:
            children.setdefault(parent(pid), []).append(pid)
        except (OSError, IndexError, ValueError):
            continue
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def alive(candidates: set[int]) -> list[int]:
    """Those still running (a zombie has exited: it waits for a parent that may never reap it)."""
    running = []
    for pid in candidates:
        try:
            if state(pid) != "Z":
                running.append(pid)
        except (OSError, IndexError):
            pass
    return running


def node_processes(session: str, head_address: str = "") -> set[int]:
    """Every process of the node whose session folder is `session` (of a head: with its Ray
    Client server, which serves `head_address`), and all their children."""
    client = ("ray.util.client.server", f"--address={head_address}") if head_address else ()
    return descendants(mentioning(session + "/", session + " ", every=client))


def terminate(find, grace_s: float = 10.0) -> list[int]:
    """SIGTERM to what `find()` returns, again to what appears meanwhile, SIGKILL to what is left
    after `grace_s`; returns the pids still running after that (none, normally)."""
    targets = find()
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 3.0)):
        deadline = time.time() + wait_s
        while True:
            targets |= find()
            running = alive(targets)
            if not running or time.time() > deadline:
                break
            for pid in running:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.2)
    return alive(targets)


def record(role: str, port: str, temp_dir: str, gcs_address: str) -> str:
    """Note the node just started with `--temp-dir=temp_dir`: its session is the one Ray's
    session_latest link names there. Returns the record's path."""
    session = os.path.realpath(os.path.join(temp_dir, "session_latest"))
    if not os.path.isdir(session):
        raise SystemExit(f"ray_nodes: no session in {temp_dir}: did `ray start` succeed?")
    RECORDS.mkdir(parents=True, exist_ok=True)
    path = RECORDS / f"{role}-{port}"
    path.write_text(f"{session}\n{gcs_address}\n")
    return str(path)


def stop(roles: list[str]) -> int:
    """Stop every node of `roles` recorded on this machine; 0 if there was one, 1 if none."""
    records = [p for p in sorted(RECORDS.glob("*-*")) if p.name.rsplit("-", 1)[0] in roles]
    if not records:
        print(f"no Ray node of {'/'.join(roles)} started by the launch scripts is recorded here ({RECORDS}); "
              "`ray stop` would end every Ray of yours on this machine", file=sys.stderr)
        return 1
    for path in records:
        session, gcs_address = path.read_text().split()
        role = path.name.rsplit("-", 1)[0]
        head_address = "" if role == "worker" else gcs_address  # a worker's GCS is the head's
        left = terminate(lambda: node_processes(session, head_address))
        if left:
            print(f"ray_nodes: {path.name}: processes still running: {left}", file=sys.stderr)
            return 2
        path.unlink()
        print(f"stopped the Ray {role} of {gcs_address} on this machine (session {session})")
    return 0


def ephemeral_start() -> int:
    """Where Linux's ephemeral port range starts (the ports the system hands out: a client's
    socket, any `bind(0)`), 32768 where it cannot be read."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing holds `port` on `host` ("" for every address) now."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def quiet_port(low: int = 20000) -> int:
    """A port on 127.0.0.1 that nothing listens on now, from `low` up to the start of Linux's
    ephemeral range: above Ray's worker ports (10002-19999 by default) and below the ports the
    system hands out and Ray picks itself. A port drawn from the ephemeral range can be taken by
    another process before the agent binds it, and then no job can be submitted (seen in the
    cluster scripts' test). Tried in random order, so heads started together rarely try the same
    one."""
    top = max(ephemeral_start(), low + 1000)
    candidates = list(range(low, top))
    random.shuffle(candidates)
    for port in candidates:
        if is_free(port):
            return port
    raise SystemExit(f"no free port from {low} to {top - 1}: set RAY_AGENT_PORT")


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[0] == "record":
        print(record(*argv[1:]))
        return 0
    if len(argv) >= 2 and argv[0] == "stop":
        return stop(argv[1:])
    if argv == ["port"]:
        print(quiet_port())
        return 0
    print("usage: ray_nodes.py record ROLE PORT TEMP_DIR GCS_ADDRESS | stop ROLE... | port", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
