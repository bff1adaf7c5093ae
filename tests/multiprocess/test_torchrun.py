"""The torchrun backend on CPU (gloo): bit-identical to the sequential trainer, resumable, and a
failing stage ends the run with its name."""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.helpers.runs import EXACT, assert_same_parameters, run_ffpipe, summary

pytestmark = pytest.mark.slow

CASES = {
    # small CNN at layer granularity: boundaries fall between the unit that pushes a block's
    # input and the unit that pops it, so skip tensors cross stages
    "small_cnn-layer": ["model.name=small_cnn", "model.granularity=layer", "train.max_steps=4"],
    "resnet18-block": ["model.name=resnet18", "model.granularity=block", "train.max_steps=3"],
}
SPLITS = {("small_cnn-layer", 2): "[2]", ("small_cnn-layer", 3): "[2, 4]",
          ("resnet18-block", 2): "[4]", ("resnet18-block", 3): "[3, 6]"}


@pytest.mark.parametrize("case, stages", sorted(SPLITS))
def test_torchrun_stages_match_the_sequential_trainer_bit_for_bit(tmp_path, case, stages):
    ref = tmp_path / "sequential"
    run_ffpipe(EXACT + CASES[case] + [f"run.dir={ref}"])
    piped = tmp_path / f"torchrun{stages}"
    run_ffpipe(EXACT + CASES[case] + [f"run.dir={piped}", f"pipeline.boundaries={SPLITS[case, stages]}"],
               stages=stages)
    assert_same_parameters(ref, piped)
    a, b = summary(ref), summary(piped)
    assert a["test_accuracy_per_unit"] == b["test_accuracy_per_unit"]
    assert b["num_stages"] == stages and [s["stage"] for s in b["stages"]] == list(range(stages))
    assert all(s["wait_recv_s"] >= 0 and s["images_per_second"] > 0 for s in b["stages"])


def test_torchrun_stages_with_microbatches_match_the_sequential_trainer_bit_for_bit(tmp_path):
    """train.microbatches = 4 over 18 rows (5, 5, 4, 4): the slices cross gloo one by one."""
    common = EXACT + CASES["small_cnn-layer"] + ["train.batch_size=18", "train.microbatches=4"]
    ref, piped = tmp_path / "sequential", tmp_path / "torchrun2"
    run_ffpipe(common + [f"run.dir={ref}"])
    run_ffpipe(common + [f"run.dir={piped}", "pipeline.boundaries=[2]"], stages=2)
    assert_same_parameters(ref, piped)
    assert summary(piped)["steps"] == 4
    assert summary(ref)["test_accuracy_per_unit"] == summary(piped)["test_accuracy_per_unit"]


def test_torchrun_stopped_and_resumed_equals_an_uninterrupted_run(tmp_path):
    common = EXACT + ["model.name=small_cnn", "model.granularity=layer", "train.epochs=2",
                      "run.checkpoint_every=2", "pipeline.boundaries=[2]"]
    whole = tmp_path / "whole"
    run_ffpipe(common + [f"run.dir={whole}"], stages=2)
    split = tmp_path / "split"
    first = run_ffpipe(common + [f"run.dir={split}", "run.stop_after_step=5"], stages=2)
    assert f"continue with: launch/torchrun.sh 2 --resume {split}" in first.stdout
    assert summary(split)["completed"] is False and summary(split)["steps"] == 5
    # the command the stopped run suggested, as a user types it
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHON": sys.executable}
    resumed = subprocess.run(["bash", "launch/torchrun.sh", "2", "--resume", str(split)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 5" in resumed.stderr
    assert_same_parameters(whole, split)
    s, w = summary(split), summary(whole)
    assert s["completed"] and [h["test_accuracy"] for h in s["history"]] == [h["test_accuracy"] for h in w["history"]]


def test_a_failing_stage_ends_the_run_with_its_name(tmp_path):
    done = run_ffpipe(EXACT + ["model.name=small_cnn", "train.lr=1e12", "train.warmup_fraction=0",
                               "train.max_steps=6", f"run.dir={tmp_path / 'r'}"], stages=2,
                      check=False, timeout=120)
    assert done.returncode != 0
    assert "became non-finite" in done.stderr and "(stage " in done.stderr


def test_a_run_goes_on_on_other_layouts_and_backends_and_learns_the_same_bit_for_bit(tmp_path):
    """Checkpoints are keyed by unit: 2 torchrun stages, then 3, then the sequential trainer."""
    common = EXACT + ["model.name=small_cnn", "model.granularity=layer", "train.epochs=2",
                      "run.checkpoint_every=2"]  # 12 steps
    whole = tmp_path / "whole"
    run_ffpipe(common + [f"run.dir={whole}"])
    run = tmp_path / "run"
    run_ffpipe(common + [f"run.dir={run}", "run.stop_after_step=4"], stages=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHON": sys.executable}
    three = subprocess.run(["bash", "launch/torchrun.sh", "3", "--resume", str(run), "--set", "run.stop_after_step=8"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert three.returncode == 0, three.stderr[-3000:]
    assert "resuming at step 4" in three.stderr and "layout 2 stage(s)" in three.stderr
    assert summary(run)["num_stages"] == 3 and summary(run)["steps"] == 8
    run_ffpipe(["pipeline.backend=local", "pipeline.stages=1"], resume=run)
    assert_same_parameters(whole, run)
    layouts = json.loads((run / "partition.json").read_text())["history"]
    assert [(h["step"], len(h["starts"])) for h in layouts] == [(0, 2), (4, 3), (8, 1)]
    changes = [f for f in map(json.loads, (run / "failures.jsonl").read_text().splitlines()) if f.get("layout")]
    assert [c["step"] for c in changes] == [4, 8]
    assert sorted(p.name for p in (run / "metrics").iterdir()) == ["stage-0.parquet"]  # regrouped
    s = summary(run)
    assert s["completed"] and s["num_stages"] == 1
    assert [h["test_accuracy"] for h in s["history"]] == [h["test_accuracy"] for h in summary(whole)["history"]]


def test_plain_torchrun_without_a_backend_is_one_pipelined_run(tmp_path):
    """`torchrun --nproc-per-node=2 -m ffpipe train` as users type it (no pipeline.backend): one
    run of 2 stages, not 2 runs of one; a backend that contradicts torchrun is named in one line."""
    sets = [a for o in EXACT + ["model.name=small_cnn", "train.max_steps=3"] for a in ("--set", o)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                "-m", "ffpipe", "train", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([*torchrun, "--set", f"run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    s = summary(tmp_path / "run")
    assert s["backend"] == "torchrun" and s["num_stages"] == 2 and s["steps"] == 3
    assert [st["stage"] for st in s["stages"]] == [0, 1]
    assert done.stdout.count("test accuracy") == 1 and not (tmp_path / "runs").exists()
    wrong = subprocess.run([*torchrun, "--set", "pipeline.backend=local"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert wrong.returncode != 0
    assert "torchrun started 2 processes but pipeline.backend = 'local'" in wrong.stderr
