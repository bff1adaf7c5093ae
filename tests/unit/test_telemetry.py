"""What a run tells while it goes and after: its metric rows (old files still read), the live
loggers' tags, the flight recorder's dump of a stalled stage, the runs listing and the plots."""
import json
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ffpipe.errors import ConfigError
from ffpipe.pipeline.messages import Phase, control
from ffpipe.reports.runs import describe, format_runs, run_folders
from ffpipe.run.folder import RunFolder
from ffpipe.telemetry import sinks
from ffpipe.telemetry.flight import FlightRecorder
from ffpipe.telemetry.plots import plot_run
from ffpipe.telemetry.rows import SCHEMA, rows_of_parquet, rows_to_parquet
from tests.helpers import make_config


def _row(step, unit, stage=0, **extra):
    return {"phase": "train", "epoch": 0, "step": step, "stage": stage, "unit": unit, "loss": 1.0 / step,
            "accuracy": 0.5, "lr": 0.1, "images_per_s": 100.0, "wait_recv_s": 0.0, "wait_send_s": 0.0,
            "peak_memory_mib": 10.0, "wall_s": float(step), **extra}


def test_rows_of_the_first_schema_still_read_with_the_new_columns_empty():
    old_schema = pa.schema([f for f in SCHEMA if f.name in _row(1, 0)])
    old = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist([_row(1, 0)], schema=old_schema), old)
    new = rows_to_parquet([_row(2, 0, share_busy=0.5, time=123.0)])
    rows = rows_of_parquet([old.getvalue().to_pybytes(), new])
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["share_busy"] is None and rows[1]["share_busy"] == 0.5 and rows[1]["time"] == 123.0


def test_live_tags_name_stages_units_and_evaluations():
    rows = [_row(4, u, stage=1, share_busy=0.9, queue_fill=2) for u in (3, 4)]
    tags = sinks.stage_scalars(rows)
    assert tags["stage1/share_busy"] == 0.9 and tags["stage1/queue_fill"] == 2
    assert {"unit3/loss", "unit4/loss", "unit3/train_accuracy"} <= tags.keys()
    result = {"test_accuracy": 0.8, "test_accuracy_last": 0.7, "test_accuracy_per_unit": [0.5, 0.7]}
    assert sinks.eval_scalars(result) == {"test/accuracy": 0.8, "test/accuracy_last": 0.7,
                                          "test/accuracy_unit0": 0.5, "test/accuracy_unit1": 0.7}


def test_loggers_auto_is_tensorboard_where_installed_and_a_missing_one_says_what_to_install(monkeypatch):
    assert sinks.chosen("auto") == ["tensorboard"] and sinks.chosen([]) == []
    monkeypatch.setattr(sinks, "_installed", lambda package: package != "wandb")
    with pytest.raises(ConfigError, match=r"run.loggers asks for wandb .* pip install wandb"):
        sinks.chosen(["tensorboard", "wandb"])
    with pytest.raises(ConfigError, match="run.loggers"):
        make_config("run.loggers=['tensorbored']")


def test_a_stalled_stage_leaves_its_last_events_and_the_call_it_waits_in(tmp_path):
    folder = RunFolder.create(make_config(f"run.dir={tmp_path / 'run'}"))
    recorder = FlightRecorder(folder, 1, 0, after_s=0.4).start()
    recorder.note("recv", control(Phase.TRAIN, 0, 41))
    release = threading.Event()

    def waiting_for_the_previous_stage():
        release.wait(10)

    threading.Thread(target=waiting_for_the_previous_stage, name="stage-1-loop").start()
    deadline = time.time() + 10
    while recorder.dumped is None and time.time() < deadline:
        time.sleep(0.05)
    release.set()
    recorder.stop()
    text = (folder.path / "flight" / "stage-1-attempt-0.txt").read_text()
    assert recorder.dumped == "flight/stage-1-attempt-0.txt"
    assert "stage 1 made no progress" in text and "recv TRAIN epoch 0 step 41" in text
    assert "thread stage-1-loop:" in text and "waiting_for_the_previous_stage" in text


def test_runs_lists_each_folder_with_its_status_and_results(tmp_path):
    done = RunFolder.create(make_config(f"run.dir={tmp_path / 'done'}", "model.name=mlp", "model.granularity=layer"))
    done.write_summary({"completed": True, "test_accuracy": 0.875, "images_per_second_steady": 1234.0,
                        "steps": 16, "total_steps": 16})
    running = RunFolder.create(make_config(f"run.dir={tmp_path / 'running'}"))
    running.write_stage_metrics(0, [_row(2, 0)])
    failed = RunFolder.create(make_config(f"run.dir={tmp_path / 'failed'}"))
    failed.record_failure(1, 30, "TrainingError: non-finite", attempt=0)
    (tmp_path / "not-a-run").mkdir()
    rows = {r["run"]: r for r in map(describe, run_folders(str(tmp_path)))}
    assert {k: r["status"] for k, r in rows.items()} == {"done": "done", "running": "running", "failed": "failed"}
    table = format_runs(list(rows.values()))
    assert "done | done | mlp | sff layer | 87.50% | 1,234 | 16/16" in table
    assert json.dumps(list(rows.values()))  # --json writes them as they are


def test_status_reads_the_stages_metric_files_in_order_and_never_one_being_written(tmp_path):
    """A running stage writes metrics/stage-k.parquet.tmp-<hex> and renames it: `ffpipe status`
    listed it, and the read found it renamed away (FileNotFoundError, seen in a suite run)."""
    from ffpipe.reports.runs import _stage_lines

    cfg = make_config(f"run.dir={tmp_path / 'r'}")
    folder = RunFolder.create(cfg)
    for k in (0, 2, 10):
        folder.write_stage_metrics(k, [_row(4, k, stage=k)])
    (folder.path / "metrics" / "stage-0.parquet.tmp-0123abcd").write_bytes(b"half a parquet file")
    assert folder.stage_metric_files() == [f"metrics/stage-{k}.parquet" for k in (0, 2, 10)]
    lines = _stage_lines(folder, cfg, running=False)
    assert [line.split(":")[0] for line in lines] == ["stage 0", "stage 2", "stage 10"]


def test_plots_show_units_with_values_the_vote_epochs_and_each_stages_time(tmp_path):
    rows = [_row(s, u, stage=u // 2, share_busy=0.6, share_waiting_recv=0.3, share_waiting_send=0.1,
                 time=1000.0 + s) for s in (2, 4, 6) for u in range(4)]
    rows += [{"phase": "test", "epoch": e, "step": 6 * e, "stage": -1, "unit": u, "accuracy": 0.6 + 0.05 * u + 0.1 * e}
             for e in (0, 1) for u in (-1, 0, 1, 2, 3)]
    names = sorted(p.name for p in plot_run(rows, tmp_path))
    assert names == ["stage_timeline.png", "test_accuracy_by_epoch.png", "test_accuracy_by_unit.png",
                     "train_accuracy.png", "train_loss.png"]
