"""`ray job submit` against a local head started with `ray start --head` on loopback."""
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.pipeline_helpers import summary

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]
BIN = Path(sys.executable).parent




def test_ray_job_submit_to_a_local_head(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_PORT": str(free_port()),
           "DASHBOARD_PORT": str(free_port()), "PYTHON_ON_HEAD": sys.executable,
           "RUN_DIR": str(tmp_path / "job-run")}
    env.pop("RAY_ADDRESS", None)
    # Its own temp dir marks every process of this head, so the test stops exactly those
    # (`ray stop` would end every Ray on the machine, other tests' included).
    temp_dir = tempfile.mkdtemp(prefix="ffray", dir="/tmp")
    head = subprocess.run(["bash", "launch/ray_head.sh", "start", "--num-cpus=3", f"--temp-dir={temp_dir}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert head.returncode == 0, head.stderr
    try:
        address = f"http://127.0.0.1:{env['DASHBOARD_PORT']}"
        done = subprocess.run(["bash", "launch/ray_submit.sh", "--address", address,
                               "--set", "data.name=synthetic", "--set", "train.max_steps=6",
                               "--set", "pipeline.stages=2", "--set", "train.device=cpu",
                               "--set", "run.plots=false"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "succeeded" in done.stdout + done.stderr
        assert f"run folder: {tmp_path / 'job-run'}" in done.stdout
        result = summary(tmp_path / "job-run")
        assert result["backend"] == "ray" and result["num_stages"] == 2 and result["completed"]
    finally:
        _stop_processes_mentioning(temp_dir)


def _stop_processes_mentioning(marker: str) -> None:
    def pids():
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="ignore"):
                    found.append(int(pid))
            except OSError:
                pass
        return found

    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        for pid in pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while pids() and time.time() < deadline:
            time.sleep(0.2)
    assert not pids(), f"Ray processes of {marker} still running"
