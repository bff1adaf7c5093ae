"""The shell scripts of the set-up, run with stand-ins for the commands they call (no internet,
no root): `make data` falls back to torchvision's download where apt-get cannot run, and the
launch scripts find the repository's .venv themselves."""
import shutil
import subprocess
from pathlib import Path

from tests.helpers import REPO

TOOLS = ("bash", "cat", "dirname", "basename")  # what the scripts need besides the stand-ins


def _bin(tmp_path: Path, uid: int = 1000, **scripts: str) -> Path:
    """A PATH folder with the basic tools, `id` answering `uid`, and `name`: a script that logs
    its arguments, then runs `body`."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for tool in TOOLS:
        (folder / tool).symlink_to(shutil.which(tool))
    (folder / "id").write_text(f"#!/bin/bash\necho {uid}\n")
    (folder / "id").chmod(0o755)
    for name, body in scripts.items():
        path = folder / name
        path.write_text(f'#!/bin/bash\necho "{name} $*" >> "{tmp_path}/calls"\n{body}\n')
        path.chmod(0o755)
    return folder


def _get_data(tmp_path: Path, folder: Path) -> subprocess.CompletedProcess:
    env = {"PATH": str(folder), "HOME": str(tmp_path / "home"), "FFPIPE_CACHE": str(tmp_path / "cache"),
           "FASHION_MNIST_DIR": str(tmp_path / "system"), "VIRTUAL_ENV": "/elsewhere",
           "PYTHON": str(folder / "python3")}
    return subprocess.run([str(folder / "bash"), str(REPO / "launch" / "get_fashion_mnist.sh")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def _calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_make_data_without_apt_get_downloads_with_torchvision(tmp_path):
    folder = _bin(tmp_path, python3="exit 0")
    done = _get_data(tmp_path, folder)
    assert done.returncode == 0, done.stderr
    assert _calls(tmp_path) == ["python3 -m ffpipe.data.fetch fashion_mnist"]
    assert f"downloading it with torchvision into {tmp_path}/cache/fashion_mnist" in done.stderr


def test_make_data_where_sudo_asks_a_password_skips_apt_get(tmp_path):
    folder = _bin(tmp_path, sudo="exit 1", python3="exit 0", **{"apt-get": "exit 0"})
    assert _get_data(tmp_path, folder).returncode == 0
    assert _calls(tmp_path) == ["sudo -n true", "python3 -m ffpipe.data.fetch fashion_mnist"]


def test_make_data_as_root_tries_apt_get_first(tmp_path):
    folder = _bin(tmp_path, uid=0, python3="exit 0", **{"apt-get": "exit 0"})  # installs nothing
    assert _get_data(tmp_path, folder).returncode == 0
    assert _calls(tmp_path) == ["apt-get install -y -q dataset-fashion-mnist",
                                "python3 -m ffpipe.data.fetch fashion_mnist"]


def test_make_data_offline_says_what_to_do(tmp_path):
    folder = _bin(tmp_path, python3='echo "ffpipe: error: downloading failed" >&2; exit 2')
    done = _get_data(tmp_path, folder)
    assert done.returncode == 1
    assert "ffpipe: error: downloading failed" in done.stderr
    assert f"into\n{tmp_path}/cache/fashion_mnist/ and run the command again" in done.stderr


def test_make_data_finds_a_download_already_made(tmp_path):
    raw = tmp_path / "cache" / "fashion_mnist" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"")
    folder = _bin(tmp_path, python3="exit 1")
    assert _get_data(tmp_path, folder).returncode == 0 and _calls(tmp_path) == []


def test_launch_scripts_put_the_repository_venv_first_on_path(tmp_path):
    repo = tmp_path / "repo"
    (repo / "launch").mkdir(parents=True)
    shutil.copy(REPO / "launch" / "venv.sh", repo / "launch")
    shutil.copy(REPO / "launch" / "torchrun.sh", repo / "launch")
    venv_bin = repo / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python3").write_text(f'#!/bin/bash\necho "venv python3 $*" > "{tmp_path}/calls"\n')
    (venv_bin / "python3").chmod(0o755)
    folder = _bin(tmp_path)
    script = [str(folder / "bash"), str(repo / "launch" / "torchrun.sh"), "2", "--nnodes=2"]
    env = {"PATH": str(folder), "HOME": str(tmp_path)}
    assert subprocess.run(script, env=env, timeout=60).returncode == 0
    assert _calls(tmp_path) == ["venv python3 -m ffpipe.backends.torchrun_launch 2 --nnodes=2"]
    (tmp_path / "calls").unlink()  # an active virtual environment is the user's choice: left first
    subprocess.run(script, env={**env, "VIRTUAL_ENV": "/other"}, timeout=60)
    assert _calls(tmp_path) == []
