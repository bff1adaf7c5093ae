"""launch/ray_submit.sh against a stand-in `ray` command: a head whose job agent is still coming up
is asked again, and one whose agent never comes up (a port it needs taken, say) is named with
where its log is, instead of the script ending on Ray's own words or waiting without end."""
import os
import subprocess

import pytest

from tests.helpers import REPO

NO_AGENT = "RuntimeError: No available agent to submit job, please try again later."


def _submit(tmp_path, refusals: int) -> tuple[subprocess.CompletedProcess, int]:
    """Run the script with a `ray` that refuses the first `refusals` submissions as a head without
    its job agent does, then accepts; (the script's result, how many submissions it made)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    fake = bin_dir / "ray"
    fake.write_text(f"""#!/usr/bin/env bash
[ "$1" = get-auth-token ] && exit 0
echo "$*" >> {calls}
if [ $(wc -l < {calls}) -le {refusals} ]; then echo "{NO_AGENT}"; exit 1; fi
echo "Job 'raysubmit_1' succeeded"
""")
    fake.chmod(0o755)
    # VIRTUAL_ENV set: the launch scripts then leave PATH as it is (no .venv first)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", VIRTUAL_ENV=str(tmp_path),
               RAY_SUBMIT_WAIT_S="10", RUN_DIR=str(tmp_path / "run"))
    done = subprocess.run(["bash", "launch/ray_submit.sh", "--set", "train.max_steps=1"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    return done, calls.read_text().count("job submit")


@pytest.mark.parametrize("refusals", [1, 2])
def test_a_head_without_its_job_agent_is_asked_again_and_then_named(tmp_path, refusals):
    done, submissions = _submit(tmp_path, refusals)
    if refusals == 1:  # up by the second try: the run is submitted and its folder named
        assert done.returncode == 0, done.stderr
        assert submissions == 2 and f"run folder: {tmp_path / 'run'}" in done.stdout
        assert "not up yet; trying again in 5 s" in done.stderr
    else:  # never up within RAY_SUBMIT_WAIT_S (two tries, 5 s apart): named, with where to look
        assert done.returncode == 1 and submissions == 2
        assert "job agent did not come up in the 10 s given (RAY_SUBMIT_WAIT_S); nothing was submitted" in done.stderr
        assert "dashboard_agent.log" in done.stderr and "address already in use" in done.stderr
        assert "run folder" not in done.stdout
