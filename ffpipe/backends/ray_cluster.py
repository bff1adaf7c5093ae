"""Joining a Ray cluster, or starting a local one that is locked down: listening on 127.0.0.1 only
with Ray's token authentication on, and never mistaken for another cluster on the machine."""
from __future__ import annotations

import logging
import math
import os
import secrets
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from ffpipe.config import Config
from ffpipe.errors import ConfigError, PipelineError

# Ray reads both at its first import, so they go into the environment before any `import ray`.
# Ray on Linux replaces a loopback node address by the machine's routable one, and a cluster it
# starts then listens on every interface; this switch (the one Ray uses on laptops) keeps a
# single-machine cluster's GCS, raylet, workers and driver on 127.0.0.1.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
AUTH_MODE = "RAY_AUTH_MODE"


def connect(cfg: Config, processes: int) -> bool:
    """Join the configured cluster, or start a new local one on 127.0.0.1 with Ray's token
    authentication on. Returns whether this process started Ray (and so must stop it)."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return False
    address = cfg.pipeline.address
    _prepare_environment(address)
    target = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    if target:  # before importing ray (a second or more): a wrong address is answered at once
        _probe(address, target, cfg.pipeline.timeout_s)
    import ray

    if address:
        _join(ray, address, cfg.pipeline.timeout_s)
        return False
    # CPUs are a logical resource: a small machine still gets one per stage process (they share the cores).
    cpus = max(os.cpu_count() or 1, math.ceil(processes * cfg.pipeline.cpus_per_stage))
    # "local": always a new cluster of our own. Without it ray.init() joins any head, live or
    # stale, that it finds on this machine (and then refuses num_cpus).
    context = ray.init(address="local", num_cpus=cpus, include_dashboard=cfg.pipeline.dashboard,
                       log_to_driver=True)
    if context.dashboard_url:  # Ray takes the next free port when 8265 is busy: say which, and how in
        print(f"ffpipe: Ray dashboard http://{context.dashboard_url} (it asks for the cluster's token: "
              f"`ray get-auth-token`, or the file {_token_path()})", file=sys.stderr, flush=True)
    return True


def stage_slots(bundle: dict) -> int:
    """How many stage actors of `bundle` (its CPUs and GPUs) the cluster's live nodes can hold."""
    import ray

    slots = 0
    for node in ray.nodes():
        if node.get("Alive"):
            have = node.get("Resources", {})
            slots += int(min(have.get(r, 0) // v for r, v in bundle.items() if v > 0))
    return slots


def _prepare_environment(address: str) -> None:
    """For a cluster on this machine: keep Ray on 127.0.0.1, and authenticate with the token."""
    if not _on_this_machine(address):
        return
    imported = sys.modules.get("ray._private.ray_constants")
    if imported is not None and imported.ENABLE_RAY_CLUSTER:  # too late for LOOPBACK_ONLY
        raise PipelineError("ray was imported before ffpipe could keep its cluster on 127.0.0.1: set "
                            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before importing ray")
    os.environ.update(LOOPBACK_ONLY)
    if not address:
        _write_private_token()
        # Unset, Ray turns token authentication on for a cluster that ray.init() starts (and
        # refreshes its own settings); a value such as "disabled" in the environment would not.
        os.environ.pop(AUTH_MODE, None)
    elif _have_token():
        os.environ.setdefault(AUTH_MODE, "token")  # Ray sends its token only in token mode


def _on_this_machine(address: str) -> bool:
    """'' (a new local cluster), 'auto' (Ray finds one here, unless RAY_ADDRESS names one) or a
    loopback host."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
    host = _host_port(address)[0]
    return not address or host in ("localhost", "::1") or host.startswith("127.")


def _host_port(address: str) -> tuple[str, str]:
    """'host:port', 'ray://host:port' or '[::1]:port' -> (host, port)."""
    host, _, port = address.split("://")[-1].rpartition(":")
    return host.strip("[]"), port


def _token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def _have_token() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or _token_path().is_file()


def _write_private_token() -> None:
    """Ray writes a missing token file with the umask's mode, often readable by every user of the
    machine, who could then join a cluster on 127.0.0.1: write it first, for this user only."""
    if _have_token() or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = _token_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another run made it meanwhile
        return
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # Ray's own format: 256 random bits in hex


def _join(ray, address: str, timeout: float) -> None:
    """ray.init(address) within pipeline.timeout_s. Ray retries an address that does not answer
    as a Ray head for many minutes, so it connects in a helper thread that the driver leaves
    behind (a daemon: it does not hold the process) when the deadline passes."""
    deadline = time.monotonic() + timeout
    errors: list[Exception] = []

    def init():
        try:
            ray.init(address=address, log_to_driver=True)
        except Exception as err:  # reported below, with the address
            errors.append(err)

    _exit_on_sigterm()
    thread = threading.Thread(target=init, name="ffpipe-ray-connect", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive() or errors:
        why = (f"{type(errors[0]).__name__}: {str(errors[0]).strip().splitlines()[0][:300]}" if errors
               else f"no answer within pipeline.timeout_s = {timeout:g} s")
        raise PipelineError(f"cannot join the Ray cluster at pipeline.address = {address!r} ({why}); "
                            "start a head there (launch/ray_head.sh on this machine), and where it "
                            "requires a token, give it here (~/.ray/auth_token or RAY_AUTH_TOKEN, "
                            "with RAY_AUTH_MODE=token)")


def _probe(address: str, target: str, timeout: float) -> None:
    """Fail at once where nothing listens (Ray would retry for minutes)."""
    host, port = _host_port(target)
    if not port.isdigit():
        raise ConfigError(f"a Ray address is host:port, not {target!r} (pipeline.address = {address!r}: "
                          "'' for a new local cluster, 'auto', or the head's host:port)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise PipelineError(f"nothing answers at {target} (pipeline.address = {address!r}: "
                            f"{err.strerror or err}); start a Ray head there (launch/ray_head.sh "
                            "on this machine) or correct the address") from None


def _exit_on_sigterm() -> None:
    """What ray.init does on the main thread, and skips (with a warning) on the helper thread:
    SIGTERM (`ray job stop`) exits through Python, so the driver's `finally` frees its actors."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(signum))
        logging.getLogger("ray._private.worker").addFilter(
            lambda record: "SIGTERM handler is not set" not in record.getMessage())
