"""Runs as a collection: `ffpipe runs [FOLDER|URI]` lists the run folders in a folder, `ffpipe status
RUN` says where one is now. Both read only small files (config, summary, layout, failures, file
names and times), never checkpoints, so a folder of a hundred runs answers at once.

A run is done (its summary says completed), stopped (a summary short of the end:
run.stop_after_step), running (no summary, metric rows or an evaluation written within ACTIVE_S,
as every stage rewrites its rows every few seconds, and no failure recorded since), failed
(failures.jsonl names a failure, and no progress since) or unfinished (stopped with nothing
recorded: killed).
"""
from __future__ import annotations

import datetime
import json
import time

from ffpipe.run.checkpoints import complete_steps, saved
from ffpipe.run.folder import RunFolder
from ffpipe.run.store import Store, join

ACTIVE_S = 120.0
COLUMNS = ("run", "status", "model", "algo", "accuracy", "img/s", "steps", "started")


def run_folders(root: str) -> list[RunFolder]:
    """The run folders directly in `root` (a path or a URI), and `root` itself if it is one."""
    store = Store(root)
    if store.exists("config.toml"):
        return [RunFolder(root)]
    found = [RunFolder(join(root, name)) for name in _subfolders(store)]
    return [f for f in found if f.store.exists("config.toml")]


def _subfolders(store: Store) -> list[str]:
    if store.is_local:
        path = store.local_path("")
        return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    from pyarrow.fs import FileSelector, FileType
    infos = store._fs.get_file_info(FileSelector(store._root, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == FileType.Directory)


def describe(folder: RunFolder) -> dict:
    """One run as a row of `ffpipe runs`, with what its summary says in full."""
    cfg = folder.config()
    summary = json.loads(folder.store.read_text("summary.json")) if folder.store.exists("summary.json") else None
    status, last_write = state(folder, summary)
    started = folder.store.mtime("config.toml")
    row = {"run": str(folder).rstrip("/").rsplit("/", 1)[-1], "status": status, "model": cfg.model.name,
           "algo": f"{cfg.algo.name} {cfg.model.granularity}", "started": started, "last_write": last_write,
           "location": str(folder)}
    if summary:
        row.update({k: summary.get(k) for k in ("test_accuracy", "test_accuracy_last", "test_accuracy_best_unit",
                                                "test_accuracy_per_unit", "vote", "images_per_second",
                                                "images_per_second_steady", "wall_seconds", "peak_memory_mib",
                                                "steps", "total_steps", "device", "date", "command")})
    else:
        row["steps"] = newest_step(folder)
    return row


def state(folder: RunFolder, summary: dict | None) -> tuple[str, float | None]:
    """(status, when the run last wrote a sign of progress: metric rows or an evaluation)."""
    names = ["history.jsonl", *(f"metrics/{n}" for n in folder.store.list("metrics"))]
    last = max((t for t in map(folder.store.mtime, names) if t is not None), default=None)
    if summary is not None:
        return ("done" if summary.get("completed") else "stopped"), last
    failed_at = folder.store.mtime("failures.jsonl")
    if last is not None and time.time() - last < ACTIVE_S and (failed_at is None or failed_at <= last):
        return "running", last  # (a failure newer than its progress: failed, until a restart makes progress)
    failed = [f for f in folder.failures() if not f.get("layout")]
    return ("failed" if failed else "unfinished"), last


def newest_step(folder: RunFolder) -> int | None:
    """The newest step every unit has saved (from the checkpoints' names only)."""
    files = saved(folder)
    if not files:
        return None
    return max(complete_steps(files, max(f.last for f in files) + 1), default=None)


def format_runs(rows: list[dict]) -> str:
    lines = [" | ".join(COLUMNS), " | ".join("---" for _ in COLUMNS)]
    for r in sorted(rows, key=lambda r: r["started"] or 0):
        acc = "-" if r.get("test_accuracy") is None else f"{r['test_accuracy']:.2%}"
        rate = r.get("images_per_second_steady") or r.get("images_per_second")
        steps = "-" if r.get("steps") is None else f"{r['steps']}" + (f"/{r['total_steps']}" if r.get("total_steps") else "")
        lines.append(" | ".join([r["run"], r["status"], r["model"], r["algo"], acc, "-" if not rate else f"{rate:,.0f}",
                                 steps, _when(r["started"])]))
    return "\n".join(lines)


def _when(t: float | None) -> str:
    return "-" if t is None else datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")


def status(location: str) -> str:
    """Where a run is now: its status, each stage's step and rate from its newest metric rows, the
    time left at the last stage's pace, and its last failure."""
    folder = RunFolder.open(location)
    row = describe(folder)
    lines = [f"{row['run']}: {row['status']}" + (f", last written {time.time() - row['last_write']:.0f} s ago"
                                                  if row["last_write"] else "")]
    cfg, layout = folder.config(), folder.layout()
    lines.append(f"layout: {len(layout['starts'])} stage(s) from units {layout['starts']}, replicas {layout['replicas']}")
    lines += _stage_lines(folder, cfg, running=row["status"] == "running")
    failures = [f for f in folder.failures() if not f.get("layout")]
    if failures:
        f = failures[-1]
        lines.append(f"last failure (attempt {f['attempt']}, {f['time']}): stage {f['stage']}: {f['cause'][:300]}")
    return "\n".join(lines)


def _stage_lines(folder: RunFolder, cfg, running: bool) -> list[str]:
    from ffpipe.telemetry.rows import rows_of_parquet  # pyarrow: only here

    lines, total = [], None
    for name in folder.stage_metric_files():  # a running stage's file is replaced whole, never half-written
        rows = [r for r in rows_of_parquet([folder.store.read_bytes(name)]) if r["phase"] == "train"]
        if not rows:
            continue
        last = rows[-1]
        lines.append(f"stage {last['stage']}: step {last['step']}, {last['images_per_s']:,.0f} img/s, "
                     f"busy {100 * (last.get('share_busy') or 0):.0f}%")
        total = last
    plan = folder.plan()
    if running and total is not None and total["images_per_s"] and plan:
        steps_left = plan["total_steps"] - total["step"]
        eta = steps_left * cfg.train.batch_size / total["images_per_s"]
        lines.append(f"time left at the last stage's pace: {eta / 60:.1f} min ({steps_left} of "
                     f"{plan['total_steps']} steps)")
    return lines or ["no metric rows yet"]
