"""Training from streamed shards: the pipeline learns bit for bit what the sequential trainer
learns, a run stopped mid-epoch and resumed equals the uninterrupted one, and stage 0's memory
does not grow with the dataset."""
import resource
import subprocess
import sys

from pathlib import Path

import pytest

from ffpipe.inference.predict import predict_files
from tests.helpers import REPO
from tests.helpers.runs import assert_same_parameters, run_ffpipe, sequential_run, summary
from tests.helpers.streams import shards, stream_run


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return shards(tmp_path_factory.mktemp("stream_train"))


def test_local_stages_learn_what_the_sequential_trainer_learns_from_a_stream(root, tmp_path):
    ref = sequential_run(tmp_path / "sequential", stream_run(root))
    assert summary(ref)["test_accuracy"] > 0.6  # 3 classes told apart by colour
    assert summary(ref)["train_images"] == 48
    run_ffpipe(stream_run(root) + [f"run.dir={tmp_path / 'local'}", "pipeline.stages=2"])
    assert_same_parameters(ref, tmp_path / "local")
    # ffpipe predict on the test files crops them as the stream's evaluation did: the same score
    files = sorted((root.parent / "images" / "test").rglob("*.*"))
    rows = predict_files(ref, files, out=tmp_path / "p.csv")
    right = sum(row["class"] == Path(row["path"]).parent.name for row in rows)
    assert right / len(files) == summary(ref)["test_accuracy"]


def test_a_run_stopped_mid_epoch_and_resumed_equals_the_uninterrupted_one(root, tmp_path):
    ref = sequential_run(tmp_path / "whole", stream_run(root))
    split = tmp_path / "split"
    run_ffpipe(stream_run(root) + [f"run.dir={split}", "run.stop_after_step=8"])  # epoch 2, batch 2
    run_ffpipe([], resume=split)
    assert_same_parameters(ref, split)
    assert summary(split)["history"][-1]["test_accuracy"] == summary(ref)["history"][-1]["test_accuracy"]


PEAK_RSS = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_rss_mib(overrides: list[str]) -> float:
    """Peak resident memory of an `ffpipe train` process (stage 0 and the data it holds), MiB."""
    args = [sys.executable, "-m", "ffpipe", "train", *(a for o in overrides for a in ("--set", o))]
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600, env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
                                                      "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split()[-1]) / 1024


@pytest.mark.slow
def test_eight_times_the_images_leave_stage_zeros_peak_memory_where_it_was(tmp_path):
    """480 vs 3,840 JPEGs of 128 x 128 (8x): streamed, the peak RSS stays within 1.2x; read into
    memory, the larger set alone takes it past 1.3x, so the measure can tell the two apart."""
    sets = {k: shards(tmp_path / f"x{k}", rows_per_shard=120, per_class=160 * k, test_per_class=10,
                      sides=(128, 129)) for k in (1, 8)}
    run = ["model.name=small_cnn", "data.name=parquet", "data.image_size=32", "train.batch_size=64",
           "train.epochs=1", "train.device=cpu", "run.plots=false", "run.progress=false",
           "run.loggers=[]", "data.decode_threads=2"]
    streamed = {k: peak_rss_mib(run + [f"data.root={root}", "data.stream=on", "data.shuffle_window=256",
                                       f"run.dir={tmp_path / f'run{k}'}"]) for k, root in sets.items()}
    assert streamed[8] <= 1.2 * streamed[1], streamed
    in_memory = peak_rss_mib(run + [f"data.root={sets[8]}", "data.stream=off", "data.image_size=128",
                                    "train.max_steps=1", f"run.dir={tmp_path / 'in_memory'}"])
    print(f"peak RSS MiB: streamed {streamed}, in memory (8x) {in_memory:.0f}")
    assert in_memory > 1.3 * streamed[1], (in_memory, streamed)
