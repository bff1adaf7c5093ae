"""End-to-end runs of the local backend on synthetic data: run folder, resume-free evaluation,
the three algorithms, stage splitting, and the non-finite guard."""
import json

import pyarrow.parquet as pq
import pytest
import torch

from ffpipe.backends import train
from ffpipe.run.evaluate import evaluate
from ffpipe.errors import FFPipeError
from ffpipe.run.folder import RunFolder
from ffpipe.run.recovery import StageFailed
from tests.helpers import make_config
from tests.helpers.runs import assert_same_parameters, final_parameters, newest_units


def test_run_folder_holds_config_metrics_summary_checkpoints_and_plots(tmp_path):
    cfg = make_config(f"run.dir={tmp_path / 'run'}", "train.epochs=2", "run.plots=true")
    run_dir, summary = train(cfg)
    # tensorboard/: only where TensorBoard is installed (run.loggers = "auto")
    assert sorted(p.name for p in run_dir.iterdir() if p.name != "tensorboard") == [
        "checkpoints", "config.toml", "data.json", "history.jsonl", "metrics", "metrics.parquet", "partition.json",
        "plan.json", "plots", "summary.json"]
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    for key in ("test_accuracy", "test_accuracy_last", "test_accuracy_per_unit", "images_per_second",
                "peak_memory_mib", "wall_seconds"):
        assert summary[key] is not None
    assert len(summary["test_accuracy_per_unit"]) == 4 and len(summary["history"]) == 2
    table = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    train_rows = [r for r in table if r["phase"] == "train"]
    assert {r["unit"] for r in train_rows} == {0, 1, 2, 3}
    assert max(r["step"] for r in train_rows) == summary["steps"] == 16
    assert all(r["images_per_s"] > 0 and r["peak_memory_mib"] > 0 for r in train_rows)
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == [
        "stage_timeline.png", "test_accuracy_by_epoch.png", "test_accuracy_by_unit.png", "train_accuracy.png",
        "train_loss.png"]
    assert newest_units(run_dir)[0] == 16 and summary["completed"]
    # eval reads the checkpoints back and finds the same accuracies
    result = evaluate(run_dir)
    assert result["test_accuracy"] == summary["test_accuracy"]
    assert result["test_accuracy_per_unit"] == summary["test_accuracy_per_unit"]


def test_an_existing_run_folder_is_never_overwritten(tmp_path):
    cfg = make_config(f"run.dir={tmp_path / 'run'}", "train.max_steps=2")
    train(cfg)
    before = (tmp_path / "run" / "summary.json").read_text()
    with pytest.raises(FFPipeError, match="already holds a run"):
        train(cfg)
    assert (tmp_path / "run" / "summary.json").read_text() == before


@pytest.mark.parametrize("algo, model, granularity, extra", [
    ("sff", "small_cnn", "block", []), ("sff", "small_cnn", "layer", []),
    ("bp", "small_cnn", "block", []), ("sff", "mlp", "layer", ["train.lr=0.002"]),
    # classic FF learns slowly: more epochs, a threshold that suits unit-RMS inputs
    ("ff", "mlp", "layer", ["train.epochs=20", "algo.ff_threshold=1.0"]),
])
def test_every_algorithm_learns_the_synthetic_classes(tmp_path, algo, model, granularity, extra):
    cfg = make_config(f"algo.name={algo}", f"model.name={model}", f"model.granularity={granularity}",
                      "train.epochs=8", f"run.dir={tmp_path / 'r'}", "train.lr=0.01",
                      "train.optimizer=adam", *extra)
    _, summary = train(cfg)
    assert summary["test_accuracy"] > 0.8, summary["history"]


def test_stages_as_threads_give_the_parameters_of_the_sequential_trainer(tmp_path):
    runs = {}
    for stages, extra in ((1, []), (3, ["pipeline.boundaries=[2, 5]"])):
        cfg = make_config("model.granularity=layer", f"pipeline.stages={stages}", *extra,
                          "train.max_steps=6", f"run.dir={tmp_path / str(stages)}")
        run_dir, summary = train(cfg)
        runs[stages] = (final_parameters(run_dir), summary)
    assert len(runs[1][0]) == len(runs[3][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[1][0], runs[3][0]))
    assert runs[1][1]["test_accuracy_per_unit"] == runs[3][1]["test_accuracy_per_unit"]
    assert [s["units"] for s in runs[3][1]["stages"]] == [[0, 1], [2, 3, 4], [5, 6]]


def test_a_non_finite_loss_stops_the_run_naming_unit_and_step(tmp_path):
    cfg = make_config("train.lr=1e12", "train.max_steps=8", "train.warmup_fraction=0",
                      f"run.dir={tmp_path / 'r'}")
    with pytest.raises(StageFailed, match=r"stage 0 failed at step \d+: TrainingError: the loss of unit \d+ "
                                          r"\(stage 0\) became non-finite at step \d+"):
        train(cfg)


def test_local_run_stopped_and_resumed_equals_an_uninterrupted_run(tmp_path):
    from tests.helpers.runs import assert_same_parameters

    common = ["model.granularity=layer", "train.epochs=2", "run.checkpoint_every=3", "pipeline.stages=2",
              "train.deterministic=true"]
    whole, _ = train(make_config(*common, f"run.dir={tmp_path / 'whole'}"))
    split, first = train(make_config(*common, f"run.dir={tmp_path / 'split'}", "run.stop_after_step=7"))
    assert first["completed"] is False and first["steps"] == 7 and len(first["history"]) == 0
    _, resumed = train(RunFolder(split).resume_config([]), split)
    assert resumed["completed"] and resumed["steps"] == 16 and len(resumed["history"]) == 2
    assert_same_parameters(whole, split)
    with pytest.raises(FFPipeError, match="nothing to resume"):
        train(RunFolder(split).resume_config([]), split)


def test_resume_takes_run_and_transport_keys_and_refuses_the_arithmetic(tmp_path):
    from ffpipe.errors import ConfigError

    folder = RunFolder.create(make_config(f"run.dir={tmp_path / 'r'}", "run.stop_after_step=5"))
    cfg = folder.resume_config(["run.experiment=again", "pipeline.timeout_s=60", "run.checkpoint_every=4"])
    assert (cfg.run.experiment, cfg.pipeline.timeout_s, cfg.run.checkpoint_every) == ("again", 60.0, 4)
    assert cfg.run.stop_after_step == 0  # the saved stop point stopped the run once
    assert folder.resume_config(["run.stop_after_step=9"]).run.stop_after_step == 9
    for key in ("train.lr=0.3", "run.dir=elsewhere", "model.name=mlp"):
        with pytest.raises(ConfigError, match=f"'{key.split('=')[0]}' cannot change when a run is resumed"):
            folder.resume_config([key])


def test_with_drop_last_off_the_last_partial_batch_is_trained_and_stages_still_agree(tmp_path):
    common = ["data.synthetic_train=100", "train.batch_size=16", "train.epochs=2", "train.drop_last=false",
              "train.deterministic=true"]
    one_dir, one = train(make_config(*common, f"run.dir={tmp_path / 'one'}"))
    two_dir, two = train(make_config(*common, "pipeline.stages=2", f"run.dir={tmp_path / 'two'}"))
    assert one["steps"] == two["steps"] == 2 * 7  # 100 images: six batches of 16 and one of 4
    assert_same_parameters(one_dir, two_dir)
    _, dropped = train(make_config(*common[:3], f"run.dir={tmp_path / 'dropped'}"))
    assert dropped["steps"] == 2 * 6
