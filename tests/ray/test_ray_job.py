"""`ray job submit` against a local head from launch/ray_head.sh, on what a fresh machine has (no
Ray token yet)."""
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ffpipe.run.folder import RunFolder
from tests.helpers import REPO
from tests.helpers.machine import assert_loopback, fresh_machine_env, head_processes, listening_sockets, start_head, stop_head
from tests.helpers.runs import summary

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


def test_ray_job_submit_to_a_local_head(tmp_path):
    env = fresh_machine_env(tmp_path)
    env.update(PYTHON_ON_HEAD=sys.executable, RUN_DIR=str(tmp_path / "job-run"))
    try:
        start_head(env, "--num-cpus=3")
        token = Path(env["HOME"]) / ".ray" / "auth_token"
        assert token.stat().st_mode & 0o077 == 0, "the head's token is readable by other users"
        api = f"http://127.0.0.1:{env['DASHBOARD_PORT']}"
        with pytest.raises(urllib.error.HTTPError, match="401"):  # the Jobs API wants the token
            urllib.request.urlopen(f"{api}/api/jobs/", timeout=10)
        assert_loopback(listening_sockets(head_processes(env)))
        done = submit(api, env)
        assert "succeeded" in done.stdout + done.stderr
        assert f"run folder: {tmp_path / 'job-run'}" in done.stdout
        result = summary(tmp_path / "job-run")
        assert result["backend"] == "ray" and result["num_stages"] == 2 and result["completed"]
        # the same into a store every node would reach, the run named by the script
        store = (tmp_path / "bucket").as_uri()
        env.pop("RUN_DIR")
        done = submit(api, env, "--set", f"run.storage={store}")
        where = done.stdout.split("run folder: ")[-1].strip()
        assert where.startswith(f"{store}/ray-") and RunFolder.open(where).summary()["completed"]
    finally:
        stop_head(env)


def submit(api: str, env: dict, *options: str) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "launch/ray_submit.sh", "--address", api, "--set", "data.name=synthetic",
                           "--set", "train.max_steps=6", "--set", "pipeline.stages=2", "--set", "train.device=cpu",
                           "--set", "run.plots=false", *options], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done
