"""docker/compose.yaml: every profile validates, and the CPU profile trains end to end.

No image registry is reachable where CI runs, so the end-to-end run does not build
docker/Dockerfile: its services run on docker/host_python_base.sh's Debian image with this
machine's Python, .venv and repository mounted read-only at their own paths (an override written
here). Everything else is the compose file as users run it: the head, two CPU workers, the token
shared through a volume, `ray job submit` from the trainer, the run folder on a host volume.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("docker")]
COMPOSE = REPO / "docker" / "compose.yaml"
BASE_IMAGE = "ffpipe-host-python:bookworm"
TRAIN = ["--set", "data.name=synthetic", "--set", "train.max_steps=6", "--set", "train.device=cpu",
         "--set", "run.plots=false", "--set", "run.progress=false"]


def _compose_cmd() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and _ok(["docker", "compose", "version"]):
        return ["docker", "compose"]
    pytest.skip("no Docker Compose (docker-compose or `docker compose`); .ci/run installs it")


def _ok(cmd: list[str]) -> bool:
    return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="module")
def engine():
    """A running Docker engine: the one there is, else a dockerd this fixture starts and stops."""
    if not shutil.which("docker"):
        pytest.skip("no docker CLI; .ci/run installs docker.io")
    if _ok(["docker", "info"]):
        yield
        return
    dockerd = shutil.which("dockerd")
    if not dockerd or os.geteuid() != 0:
        pytest.skip("no Docker engine running, and none can start here (needs dockerd and root)")
    log = open(Path("/tmp") / f"ffpipe-dockerd-{os.getpid()}.log", "w")
    proc = subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not _ok(["docker", "info"]):
            if proc.poll() is not None or time.time() > deadline:
                pytest.skip(f"dockerd did not start: {Path(log.name).read_text()[-1500:]}")
            time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        Path(log.name).unlink()


def _config(*profiles: str, env: dict | None = None) -> dict:
    flags = [a for p in profiles for a in ("--profile", p)]
    done = subprocess.run([*_compose_cmd(), "-f", str(COMPOSE), *flags, "config"], cwd=REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"compose config {profiles}: {done.stderr}"
    return yaml.safe_load(done.stdout)["services"]


def _devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def _host_ip(port) -> str:  # Compose v1 writes "IP:HOST:CONTAINER/tcp", v2 a mapping
    return port.get("host_ip", "") if isinstance(port, dict) else port.split(":")[0]


def test_compose_config_validates_every_profile():
    for profiles in (("gpu",), ("cpu",), ("torchrun",), ("torchrun-cpu",)):
        _config(*profiles)
    services = _config("gpu", "cpu")
    gpu_workers = sorted(name for name, s in services.items() if "gpu" in s.get("profiles", []))
    assert gpu_workers == ["ray-worker-0", "ray-worker-1"]
    cpu_workers = sorted(name for name, s in services.items() if "cpu" in s.get("profiles", []))
    assert cpu_workers == ["cpu-worker-0", "cpu-worker-1"]
    ids = [d["device_ids"] for name in gpu_workers for d in _devices(services[name])]
    assert ids == [["0"], ["1"]], "one GPU worker per device id"
    assert [d.get("count") for d in _devices(services["torchrun"])] in (["all"], [-1])
    for name in ("ray-head", "trainer", "cpu-worker-0", "cpu-worker-1", "torchrun-cpu"):
        assert not _devices(services[name]), f"{name} must run without GPUs"
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published and all(_host_ip(p) == "127.0.0.1" for p in published), published
    three = _config("gpu", env={"FFPIPE_WORKERS": "3"})
    assert "pipeline.stages=3" in three["trainer"]["entrypoint"]
    assert three["trainer"]["environment"]["FFPIPE_WORKERS"] == "3"




def _host_python_override(path: Path) -> Path:
    """Run the services on the Debian base with this machine's Python mounted at its own paths."""
    mounts = {str(REPO), os.path.realpath(sys.base_prefix)}
    if not Path(sys.prefix).resolve().is_relative_to(REPO):
        mounts.add(str(Path(sys.prefix).resolve()))
    host = {"image": BASE_IMAGE, "working_dir": str(REPO),
            "environment": {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"},
            "volumes": [f"{m}:{m}:ro" for m in sorted(mounts)]}
    names = ["ray-head", "cpu-worker-0", "cpu-worker-1", "trainer", "torchrun-cpu"]
    path.write_text(yaml.safe_dump({"services": {n: host for n in names}}))
    return path


def _docker(*args: str) -> list[str]:
    """The words of a docker command's output (ids, addresses)."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120).stdout.split()


class Project:
    """One compose project of this test; `remove` deletes by id all it made."""

    def __init__(self, tmp_path: Path):
        self.name = f"ffpipetest{uuid.uuid4().hex[:10]}"
        self.label = f"label=com.docker.compose.project={self.name}"
        self.runs = tmp_path / "runs"
        self.runs.mkdir()
        self.runs.chmod(0o777)  # the services write as their non-root user
        (tmp_path / "data").mkdir()
        override = _host_python_override(tmp_path / "host-python.yaml")
        self.cmd = [*_compose_cmd(), "-p", self.name, "-f", str(COMPOSE), "-f", str(override)]
        self.env = {**os.environ, "FFPIPE_RUNS": str(self.runs), "FFPIPE_DATA": str(tmp_path / "data"),
                    "FFPIPE_DASHBOARD_PORT": str(free_port()), "FFPIPE_WORKERS": "2"}

    def compose(self, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*self.cmd, *args], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def container(self, service: str) -> str:
        found = _docker("ps", "-q", "--filter", self.label,
                        "--filter", f"label=com.docker.compose.service={service}")
        assert len(found) == 1, f"expected one running {service} container, found {found}"
        return found[0]

    def logs(self) -> str:
        return self.compose("--profile", "cpu", "logs", "--no-color", "--tail=30", timeout=60).stdout[-4000:]

    def leftovers(self) -> dict[str, list[str]]:
        return {"container": _docker("ps", "-aq", "--filter", self.label),
                "network": _docker("network", "ls", "-q", "--filter", self.label),
                "volume": _docker("volume", "ls", "-q", "--filter", self.label)}

    def remove(self) -> None:
        self.compose("--profile", "cpu", "--profile", "torchrun-cpu", "down", "-v", "-t", "5", timeout=120)
        removal = {"container": ["rm", "-f"], "network": ["network", "rm"], "volume": ["volume", "rm", "-f"]}
        for kind, ids in self.leftovers().items():  # what `down` missed, by id
            if ids:
                _docker(*removal[kind], *ids)
        left = self.leftovers()
        assert not any(left.values()), f"{self.name} left behind {left}"


def _summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    assert path.exists(), f"no {path}; the folder holds {sorted(p.name for p in run_dir.glob('*'))}"
    assert path.stat().st_uid != 0, "the run folder was written by root, not the image's user"
    return json.loads(path.read_text())


def _stage_nodes(project: Project) -> tuple[set[str], set[str]]:
    """Node ids of the stage actors, and of the non-head nodes, from the head's state API."""
    def ray_list(what: str, *extra: str) -> list[dict]:
        done = subprocess.run(["docker", "exec", project.container("ray-head"), "ray", "list", what,
                               "--address", "http://127.0.0.1:8265", "--format", "json", *extra],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)

    actors = ray_list("actors", "--filter", "class_name=StageWorker")
    nodes = ray_list("nodes")
    return {a["node_id"] for a in actors}, {n["node_id"] for n in nodes if not n["is_head_node"]}


def test_cpu_profile_trains_end_to_end(engine, tmp_path):
    if not _ok(["docker", "image", "inspect", BASE_IMAGE]):
        made = subprocess.run(["bash", "docker/host_python_base.sh", BASE_IMAGE], cwd=REPO,
                              capture_output=True, text=True, timeout=900)
        assert made.returncode == 0, f"could not make {BASE_IMAGE}: {made.stderr[-3000:]}"
    project = Project(tmp_path)
    try:
        up = project.compose("--profile", "cpu", "up", "-d", "--no-build", "--scale", "trainer=0",
                             timeout=180)
        assert up.returncode == 0, up.stderr[-3000:]
        port = _docker("port", project.container("ray-head"), "8265")
        assert port == [f"127.0.0.1:{project.env['FFPIPE_DASHBOARD_PORT']}"], port

        done = project.compose("run", "-T", "--rm", "-e", "RUN_DIR=/runs/ray-test", "trainer", *TRAIN)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + project.logs()
        assert "succeeded" in done.stdout + done.stderr
        result = _summary(project.runs / "ray-test")
        assert (result["backend"], result["num_stages"], result["steps"]) == ("ray", 2, 6)
        assert result["completed"]
        assert sorted(project.runs.joinpath("ray-test", "checkpoints").iterdir())  # written on the workers
        stage_nodes, worker_nodes = _stage_nodes(project)
        assert len(worker_nodes) == 2 and stage_nodes == worker_nodes, "one stage on each worker container"

        one = project.compose("run", "-T", "--rm", "-e", "RUN_DIR=/runs/torchrun-test", "torchrun-cpu", *TRAIN)
        assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
        result = _summary(project.runs / "torchrun-test")
        assert (result["backend"], result["num_stages"], result["completed"]) == ("torchrun", 2, True)
    finally:
        project.remove()
