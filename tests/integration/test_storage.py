"""run.storage: a run kept on a filesystem reached through pyarrow instead of a local folder.
In one process, pyarrow's in-memory `mock://` filesystem stands in for an object store (nothing
of the run may land on the local disk); across processes, a `file://` URI (the CLI's train,
resume and eval all take the URI)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid

import pyarrow.parquet as pq

from ffpipe.backends import train
from ffpipe.run.evaluate import evaluate
from ffpipe.run.folder import RunFolder
from tests.helpers import REPO, make_config
from tests.helpers.runs import EXACT, assert_same_parameters, run_ffpipe

# the split pinned: balanced on costs measured on a busy 2-core machine it once came out 3 + 1
TWO_STAGES = ["pipeline.stages=2", "pipeline.boundaries=[2]", "train.max_steps=6", "run.checkpoint_every=2"]


def test_a_run_in_object_storage_trains_resumes_and_evaluates_there_and_writes_nothing_locally(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # a default local run would land in ./runs
    storage = f"mock:///{uuid.uuid4().hex}/runs"
    whole, whole_summary = train(make_config(f"run.storage={storage}", "run.dir=whole", "run.plots=true", *TWO_STAGES))
    assert whole == f"{storage}/whole"
    store = RunFolder.open(whole).store
    assert store.list("") == ["config.toml", "data.json", "history.jsonl", "metrics.parquet", "partition.json", "plan.json",
                                 "summary.json"]
    assert store.list("plots") == ["stage_timeline.png", "test_accuracy_by_epoch.png", "test_accuracy_by_unit.png",
                                  "train_accuracy.png", "train_loss.png"]
    assert [n for n in store.list("checkpoints") if n.startswith("step-000000006-")] == [
        "step-000000006-units-0000-0001.pt", "step-000000006-units-0002-0003.pt"]  # small_cnn: 4 units
    rows = pq.read_table(io.BytesIO(store.read_bytes("metrics.parquet"))).to_pylist()
    assert {r["stage"] for r in rows if r["phase"] == "train"} == {0, 1}

    stopped, s = train(make_config(f"run.storage={storage}", "run.dir=stopped", "run.stop_after_step=4", *TWO_STAGES))
    assert not s["completed"] and s["steps"] == 4
    folder = RunFolder.open(stopped)
    capfd.readouterr()
    _, resumed = train(folder.resume_config([]), resume=stopped)
    assert "resuming at step 4" in capfd.readouterr().err
    assert resumed["completed"] and resumed["test_accuracy"] == whole_summary["test_accuracy"]
    assert_same_parameters(whole, stopped)  # bit for bit: resumed from the store's checkpoints

    assert evaluate(whole)["test_accuracy"] == whole_summary["test_accuracy"]
    assert RunFolder.open(whole).store.exists("eval.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not a file on this disk


def test_the_cli_trains_resumes_and_evaluates_a_run_named_by_a_file_uri(tmp_path):
    storage = (tmp_path / "shared store").as_uri()  # file:///.../shared%20store
    run = run_ffpipe(EXACT + [f"run.storage={storage}", "run.dir=sweep/a", "run.stop_after_step=3",
                              "train.max_steps=6"])
    uri = f"{storage}/sweep/a"
    assert f"continue with: ffpipe train --resume {uri}" in run.stdout
    done = run_ffpipe([], resume=uri)
    assert "test accuracy" in done.stdout and uri in done.stdout
    assert (tmp_path / "shared store" / "sweep" / "a" / "summary.json").is_file()
    evaluated = subprocess.run([sys.executable, "-m", "ffpipe", "eval", "--run-dir", uri], capture_output=True,
                               text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert evaluated.returncode == 0 and evaluated.stdout.startswith("test accuracy"), evaluated.stderr[-2000:]
