"""What an install may leave out: pyproject's promises agree with the code (Python 3.10's TOML
parser, every optional part in `dev`), a missing optional package is named with the extra that
brings it, and the dataset fetch of `make data` says what to do when the download fails."""
import sys

import pytest

from ffpipe import config as config_mod
from ffpipe.config import parse_toml
from ffpipe.data import fetch as fetch_mod
from ffpipe.data import locate as locate_mod
from ffpipe.data import sources
from ffpipe.errors import DataError, FFPipeError, optional_module
from tests.helpers import REPO
from tests.helpers.datasets import fake_idx_dataset

PROJECT = parse_toml((REPO / "pyproject.toml").read_text())["project"]


def test_python_3_10_gets_tomli_and_the_one_toml_import_falls_back_to_it():
    assert PROJECT["requires-python"] == ">=3.10"
    assert "tomli>=1.1; python_version < '3.11'" in PROJECT["dependencies"]
    source = (REPO / "ffpipe" / "config.py").read_text()
    assert "import tomli as tomllib" in source
    others = [p for p in (REPO / "ffpipe").rglob("*.py") if "tomllib" in p.read_text() and p.name != "config.py"]
    assert others == []  # every other module reads TOML through config.parse_toml


def test_dev_installs_every_optional_part_and_ray_has_token_authentication():
    extras = PROJECT["optional-dependencies"]
    assert extras["ray"] == ["ray[default]>=2.52"]  # 2.52: RAY_AUTH_MODE=token, ray get-auth-token
    itself = [d for d in extras["dev"] if d.startswith("ffpipe[")]
    included = set(itself[0][len("ffpipe["):-1].split(",")) if itself else set()
    assert included == set(extras) - {"dev"}  # make demo / make test install .[dev]: every extra
    assert any(d.startswith("pillow") for d in PROJECT["dependencies"])  # ffpipe/data/decode.py


def test_a_missing_optional_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(FFPipeError, match=r"^pipeline.backend = 'ray' needs ray, which is not installed: "
                                          r"pip install 'ffpipe\[ray\]'$"):
        optional_module("ray", "ray", "pipeline.backend = 'ray'")
    from ffpipe.backends import train
    with pytest.raises(FFPipeError, match=r"ffpipe\[ray\]"):
        train(config_mod.load(None, ["pipeline.backend=ray", "data.name=synthetic"]))
    assert optional_module("json", "none", "x").dumps([1]) == "[1]"


def test_plots_are_skipped_with_one_warning_without_matplotlib(tmp_path, monkeypatch, capsys):
    from ffpipe.run.folder import RunFolder
    from ffpipe.run.summary import write_plots
    folder = RunFolder.create(config_mod.load(None, [f"run.dir={tmp_path / 'run'}"]))
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "matplotlib" else 1)
    write_plots(folder, [{"phase": "train", "step": 1, "unit": 0, "loss": 1.0}])
    assert capsys.readouterr().err.count("pip install 'ffpipe[plots]'") == 1
    assert not (tmp_path / "run" / "plots").exists()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    from ffpipe.reports.experiments import plot_experiments
    with pytest.raises(FFPipeError, match=r"ffpipe report --plots needs matplotlib.*ffpipe\[plots\]"):
        plot_experiments([], tmp_path / "plots")


def _offline_place(monkeypatch, tmp_path, download):
    monkeypatch.setenv("FFPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # no ./data/fashion_mnist
    place = sources.PLACES["fashion_mnist"]
    monkeypatch.setitem(sources.PLACES, "fashion_mnist",
                        locate_mod.Place(place.name, place.find, place.how, (), download))


def test_fetch_downloads_into_the_cache_that_training_reads(tmp_path, monkeypatch):
    asked = []

    def download(target, size):  # torchvision's layout: <target>/FashionMNIST/raw
        asked.append(target)
        fake_idx_dataset(target / "FashionMNIST" / "raw")

    _offline_place(monkeypatch, tmp_path, download)
    found = fetch_mod.fetch("fashion_mnist")
    assert asked == [tmp_path / "cache" / "fashion_mnist"]
    assert found == tmp_path / "cache" / "fashion_mnist" / "FashionMNIST" / "raw"
    assert fetch_mod.fetch("fashion_mnist") == found and len(asked) == 1  # found, not fetched again


def test_fetch_offline_says_what_to_do(tmp_path, monkeypatch, capsys):
    def offline(target, size):
        raise OSError("network is unreachable")

    _offline_place(monkeypatch, tmp_path, offline)
    with pytest.raises(DataError, match=r"downloading it into .*cache/fashion_mnist through torchvision failed "
                                        r"\(OSError: network is unreachable\). Get it: .*dataset-fashion-mnist"):
        fetch_mod.fetch("fashion_mnist")
    assert fetch_mod.main(["fashion_mnist"]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line
    assert fetch_mod.main(["no_such_set"]) == 2
    assert "datasets that have one: fashion_mnist" in capsys.readouterr().err
