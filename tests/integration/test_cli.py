"""The command line as users meet it: one clear line for bad input, never a traceback."""
import json
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.helpers.runs import interruptible

FAST = ["--set", "data.name=synthetic", "--set", "data.synthetic_train=128", "--set",
        "data.synthetic_test=32", "--set", "data.synthetic_shape=[1, 12, 12]", "--set", "train.batch_size=32",
        "--set", "train.device=cpu", "--set", "run.plots=false"]


def ffpipe(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ffpipe", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=300)


def test_train_then_eval_from_the_command_line(tmp_path):
    run_dir = tmp_path / "run"
    done = ffpipe("train", *FAST, "--set", f"run.dir={run_dir}")
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout and str(run_dir) in done.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    evaluated = ffpipe("eval", "--run-dir", str(run_dir))
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"{summary['test_accuracy']:.4f} (vote)" in evaluated.stdout


@pytest.mark.parametrize("args, message", [
    (["--set", "train.batch_size=0"], "config key 'train.batch_size' must be >= 1"),
    (["--set", "model.granularty=layer"], "unknown config key 'model.granularty'; did you mean 'model.granularity'?"),
    (["--set", "pipline.stages=2"], "unknown config section '[pipline]'; did you mean '[pipeline]'?"),
    (["--set", "model.name=mlp", "--set", "model.granularity=block"], "'mlp' has no 'block' granularity"),
    (["--set", "data.name=mnist", "--set", "data.root=/nonexistent"], "dataset 'mnist' not found; looked in: /nonexistent"),
    (["--config", "/nonexistent.toml"], "config file /nonexistent.toml does not exist"),
    (["--set", "train.batch_size=4096"], "larger than the training set"),
    (["--set", "pipeline.stages=9"], "pipeline.stages = 9 but the model has only 4 units"),
    (["--set", "train.cuda_graphs=on"], "train.cuda_graphs = 'on' needs a CUDA device"),
])
def test_bad_input_ends_with_one_clear_line(tmp_path, args, message):
    done = ffpipe("train", *FAST, "--set", f"run.dir={tmp_path / 'r'}", *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists(), "a failed start must not leave a run folder behind"


def test_version_is_printed_and_exits_0():
    from ffpipe import __version__
    done = ffpipe("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"ffpipe {__version__}"


def test_dry_run_plans_the_run_and_trains_nothing(tmp_path):
    from ffpipe.config import parse_toml
    run_dir = tmp_path / "r"
    done = ffpipe("train", "--dry-run", *FAST, "--set", f"run.dir={run_dir}", "--set", "pipeline.stages=2",
                  "--set", "model.granularity=layer")
    assert done.returncode == 0, done.stderr
    assert not run_dir.exists() and "nothing was trained and no run folder was made" in done.stdout
    resolved = parse_toml(done.stdout)  # the plan's lines are TOML comments: the output runs as a config
    assert resolved["pipeline"]["stages"] == 2 and resolved["train"]["batch_size"] == 32
    assert resolved["run"]["dir"] == str(run_dir)
    stages = [line for line in done.stdout.splitlines() if line.startswith("# stage ")]
    assert len(stages) == 2 and stages[0].startswith("# stage 0: units 0-") and stages[1].endswith("on cpu")
    predicted = [float(line.split("predicted ")[1].split(" ms")[0]) for line in stages]
    assert all(ms > 0 for ms in predicted)
    assert "measured on cpu" in done.stdout and "2 stage(s) of 7 units on the local backend" in done.stdout
    assert "# data: synthetic, 128 training images of 1 x 12 x 12 in 10 classes, read into memory" in done.stdout
    torchrun = ffpipe("train", "--dry-run", *FAST, "--set", "pipeline.backend=torchrun", "--set",
                      "pipeline.stages=2", "--set", "pipeline.boundaries=[2]")
    assert torchrun.returncode == 0, torchrun.stderr
    assert "# stage 1: units 2-" in torchrun.stdout and "on rank 1 (cpu)" in torchrun.stdout


def test_eval_of_a_folder_that_is_no_run(tmp_path):
    done = ffpipe("eval", "--run-dir", str(tmp_path))
    assert done.returncode == 2 and "is not a run folder" in done.stderr


def test_help_config_lists_the_keys():
    done = ffpipe("train", "--help-config")
    assert done.returncode == 0 and "pipeline.stages" in done.stdout and "one of: sff, bp, ff" in done.stdout


def test_bench_step_measures_bp_and_sff_against_each_other(tmp_path):
    out = tmp_path / "step.json"
    done = ffpipe("bench", "step", "--model", "small_cnn", "--batch-sizes", "8", "--steps", "2",
                  "--warmup", "4", "--device", "cpu", "--json", str(out))
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["variant"], r["mode"]) for r in rows] == [("bp", "eager"), ("sff-block", "eager"), ("sff-layer", "eager")]
    assert [r["units"] for r in rows] == [1, 4, 7]
    assert all(r["images_per_s"] > 0 and r["peak_memory_mib"] > 0 for r in rows)
    assert rows[0]["speed_vs_bp_eager"] == 1.0
    assert rows[1]["speed_vs_bp_eager"] == rows[1]["images_per_s"] / rows[0]["images_per_s"]
    assert "| sff-layer | 8 | eager | 7 |" in done.stdout


def test_a_config_typo_is_answered_before_torch_is_imported():
    code = ("import sys; from ffpipe.cli import main; rc = main(['train', '--set', 'model.granularty=layer']); "
            "print(rc, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.stdout.split() == ["2", "False"], done.stderr


def test_help_config_into_a_closed_pipe_ends_quietly():
    done = subprocess.run(f"{sys.executable} -m ffpipe train --help-config | head -1", shell=True,
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.stdout.startswith("model.name") and "Traceback" not in done.stderr


@pytest.mark.slow
def test_ctrl_c_stops_a_local_pipeline_at_once(tmp_path):
    import signal
    import time

    run = subprocess.Popen([sys.executable, "-m", "ffpipe", "train", *FAST, "--set", "pipeline.stages=2",
                            "--set", "train.epochs=500", "--set", f"run.dir={tmp_path / 'r'}"],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    deadline = time.time() + 120
    while len(list((tmp_path / "r").glob("checkpoints/step-*-units-*.pt"))) < 2 and time.time() < deadline:
        time.sleep(0.1)  # both stages are training once the first epoch is checkpointed
    t0 = time.time()
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130 and f"with: ffpipe train --resume {tmp_path / 'r'}" in err
    assert time.time() - t0 < 10
