"""The suite's xdist_group marks hold: every test of a group runs on one worker. The Ray tests rely
on it (two local Ray clusters at once collide), and pytest 9.2 with pytest-xdist 3.8 broke it
without a word (pyproject.toml's dev extra keeps pytest below 9.2). A tiny project, run by
pytest -n 2 --dist loadgroup in a subprocess, tells which worker ran each test."""
import os
import subprocess
import sys

TESTS = '''
import os, time, pytest
pytestmark = [pytest.mark.xdist_group("together")]
@pytest.mark.parametrize("i", range(4))
def test_grouped_MODULE(i):
    time.sleep(0.05)
    with open(os.environ["GROUP_LOG"], "a") as log:
        log.write(f"together {os.environ['PYTEST_XDIST_WORKER']}\\n")
def test_alone_MODULE():
    time.sleep(0.05)
'''


def test_an_xdist_group_runs_on_one_worker(tmp_path):
    for m in "abc":
        (tmp_path / f"test_{m}.py").write_text(TESTS.replace("MODULE", m))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env["GROUP_LOG"] = str(tmp_path / "log")
    done = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-q",
                           "-p", "no:cacheprovider", str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    workers = set((tmp_path / "log").read_text().split()) - {"together"}
    assert len(workers) == 1, f"xdist_group 'together' ran on {sorted(workers)}: groups do not hold " \
                              "with this pytest and pytest-xdist (see pyproject.toml's dev extra)"
