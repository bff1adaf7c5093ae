"""The end of a run: each stage's report, the run's summary.json and plots."""
from __future__ import annotations

import datetime
import importlib.util
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from ffpipe.pipeline.partition import stage_seconds
from ffpipe.pipeline.runtime import StageLogger
from ffpipe.pipeline.replicas.topology import Topology
from ffpipe.run.folder import RunFolder
from ffpipe.run.setup import RunSetup


def stage_report(logger: StageLogger) -> dict:
    """What a stage hands the coordinator at the end (its rows are in its own metrics file)."""
    stage = logger.stage
    return {"stage": stage.stage_id, "units": stage.unit_ids, "device": str(stage.device), "step": stage.step,
            "train_images": logger.train_images, "train_seconds": logger.train_seconds,
            **steady_profile(logger.rows),
            "images_per_second": logger.train_images / max(logger.train_seconds, 1e-9),
            "wait_recv_s": logger.wait_recv.total, "wait_send_s": logger.wait_send.total,
            "telemetry_s": logger.telemetry.total, "telemetry_writer_s": logger.telemetry_writer_s,
            "peak_memory_mib": max([r["peak_memory_mib"] for r in logger.rows], default=0.0)}


def stage_reports(reports: list[dict], topology: Topology) -> list[dict]:
    """One report per stage from one per process: replica 0's, with every replica's own figures
    under "replicas" and the largest peak memory of them."""
    out = []
    for stage in range(topology.num_stages):
        mine = [reports[rank] for rank in topology.stage_ranks(stage)]
        report = dict(mine[0])
        if len(mine) > 1:
            keys = ("device", "images_per_second_steady", "share_busy", "share_busy_gpu",
                    "share_waiting_recv", "share_waiting_send", "peak_memory_mib")
            report["replicas"] = [{k: r[k] for k in keys} for r in mine]
            report["peak_memory_mib"] = max(r["peak_memory_mib"] for r in mine)
        out.append(report)
    return out


def steady_profile(rows: list[dict], skip_fraction: float = 0.25) -> dict:
    """A stage in steady state: medians over its logged windows after the first quarter of the
    steps (warm-up: cuDNN autotuning, allocator growth, pipeline fill) of images/s, of the share
    of each window the host spent waiting on the previous stage, on the next one, and working,
    and (on a GPU) the share its device spent on training steps."""
    by_step = {r["step"]: r for r in rows if r["phase"] == "train"}  # one row per unit: same values
    steps = sorted(by_step)
    windows = []
    for a, b in zip(steps, steps[1:]):
        ra, rb = by_step[a], by_step[b]
        span = rb["wall_s"] - ra["wall_s"]
        if b > steps[-1] * skip_fraction and span > 0:
            recv = (rb["wait_recv_s"] - ra["wait_recv_s"]) / span
            send = (rb["wait_send_s"] - ra["wait_send_s"]) / span
            gpu = None
            if rb.get("gpu_busy_s") is not None and ra.get("gpu_busy_s") is not None:
                gpu = (rb["gpu_busy_s"] - ra["gpu_busy_s"]) / span
            windows.append((rb["images_per_s"], recv, send, gpu))
    if not windows:
        return {"images_per_second_steady": None, "share_waiting_recv": None,
                "share_waiting_send": None, "share_busy": None, "share_busy_gpu": None}
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    recv, send = median([w[1] for w in windows]), median([w[2] for w in windows])
    gpu = [w[3] for w in windows if w[3] is not None]
    return {"images_per_second_steady": median([w[0] for w in windows]), "share_waiting_recv": recv,
            "share_waiting_send": send, "share_busy": max(0.0, 1.0 - recv - send),
            "share_busy_gpu": median(gpu) if gpu else None}


def test_rows(history: list[dict]) -> list[dict]:
    """Evaluation results as metric rows: one per unit and one (unit = -1) for the vote."""
    rows = []
    for h in history:
        base = {"phase": "test", "epoch": h["epoch"], "step": h.get("step", 0), "stage": -1}
        rows.append({**base, "unit": -1, "accuracy": h["test_accuracy"]})
        rows += [{**base, "unit": u, "accuracy": a} for u, a in enumerate(h["test_accuracy_per_unit"])]
    return rows


def add_balance(setup: RunSetup, reports: list[dict]) -> None:
    """Each stage's predicted seconds per step (from the measured costs the split was balanced
    on; per replica) beside its measured busy seconds per step in steady state."""
    batch = setup.cfg.train.batch_size
    predicted = [None] * len(reports)
    if setup.costs is not None:
        replicas = tuple(len(r.get("replicas") or [r]) for r in reports)
        predicted = stage_seconds(setup.costs, setup.cut_costs, setup.starts, replicas, setup.loader_floor)
    for report, seconds in zip(reports, predicted):
        rate = report.get("images_per_second_steady")
        busy = report.get("share_busy_gpu") if report.get("share_busy_gpu") is not None else report.get("share_busy")
        report["predicted_step_s"] = seconds
        report["busy_step_s"] = busy * batch / rate if rate and busy is not None else None


def finish_run(setup: RunSetup, folder: RunFolder, reports: list[dict], history: list[dict],
               wall_seconds: float) -> dict:
    cfg = setup.cfg
    add_balance(setup, reports)
    rows = folder.merge_metrics(setup.num_stages, test_rows(history))
    final = history[-1] if history else {}
    last = reports[-1]
    steps_done = min(r["step"] for r in reports)
    summary = {
        "completed": steps_done >= setup.plan.total_steps,
        "test_accuracy": final.get("test_accuracy"),  # under algo.vote
        "vote": cfg.algo.vote, "test_accuracy_mean": final.get("test_accuracy_mean"),
        **{k: final[k] for k in ("vote_units", "vote_weights", "val_accuracy", "val_accuracy_mean") if k in final},
        "test_accuracy_last": final.get("test_accuracy_last"),
        "test_accuracy_per_unit": final.get("test_accuracy_per_unit", []),
        "test_accuracy_best_unit": max(final.get("test_accuracy_per_unit", [0.0])),
        # The pipeline's pace is its last stage's: training images through it per training second.
        "images_per_second": last["images_per_second"],
        "images_per_second_steady": last["images_per_second_steady"],
        "peak_memory_mib": max(r["peak_memory_mib"] for r in reports),
        "wall_seconds": wall_seconds,
        "steps": steps_done, "total_steps": setup.plan.total_steps, "epochs": setup.plan.epochs,
        "algo": cfg.algo.name, "model": cfg.model.name, "granularity": cfg.model.granularity,
        "dataset": cfg.data.name, "train_images": setup.info.num_train,
        "backend": cfg.pipeline.backend, "num_stages": setup.num_stages,
        "replicas": [len(r.get("replicas") or [r]) for r in reports], "stages": reports,
        "restarts": folder.failures(),  # and layout changes ("layout": true)
        "layouts": folder.layout()["history"],  # every layout the run had, from which step
        "device": _device_name(reports[0]["device"]), "torch": torch.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": command_line(),
        "history": history,
    }
    folder.write_summary(summary)
    if cfg.run.plots:
        write_plots(folder, rows)
    return summary


def write_plots(folder: RunFolder, rows: list[dict]) -> None:
    """PNGs of the per-unit curves in <run>/plots (drawn on this machine, then stored).
    Without matplotlib (ffpipe's `plots` extra) the run goes on without them: plots are a view
    of metrics.parquet, which every run keeps, so one warning says how to get them."""
    if importlib.util.find_spec("matplotlib") is None:
        print("ffpipe: warning: no plots in the run folder: matplotlib is not installed "
              "(pip install 'ffpipe[plots]', or set run.plots = false)", file=sys.stderr, flush=True)
        return
    from ffpipe.telemetry.plots import plot_run  # matplotlib: only where plots are drawn

    local = folder.store.local_path("plots")
    if local is not None:
        plot_run(rows, local)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for path in plot_run(rows, Path(tmp)):
            folder.store.write_bytes(f"plots/{path.name}", path.read_bytes())


def command_line() -> str:
    """How this run was started, as a user would type it."""
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    if sys.argv[0].endswith(("ffpipe/__main__.py", "/ffpipe", "ffpipe")):
        return f"ffpipe {args}"
    return f"{Path(sys.argv[0]).name} {args}"


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"
