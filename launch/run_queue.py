"""Run a list of `ffpipe train` jobs on the GPUs of this machine, one job per GPU at a time.

    python launch/run_queue.py JOBS.txt [--gpus N] [--deadline-s S] [--log-dir DIR]

JOBS.txt: one job a line, `NAME [after=NAME,NAME] ffpipe-train-arguments...`; blank lines and
lines starting with # are skipped. A job starts once the jobs it names have finished well; jobs
that cannot start before the deadline are skipped and listed. Each job's output goes to
DIR/NAME.log. Prints one line per job (status, seconds) and exits 0 when every job ran.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Job:
    name: str
    args: list[str]
    after: list[str] = field(default_factory=list)
    status: str = "waiting"
    seconds: float = 0.0


def parse(path: Path) -> list[Job]:
    jobs = []
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        name, rest = words[0], words[1:]
        after = []
        if rest and rest[0].startswith("after="):
            after = rest.pop(0)[len("after="):].split(",")
        jobs.append(Job(name, rest, after))
    names = {j.name for j in jobs}
    for job in jobs:
        missing = set(job.after) - names
        if missing:
            raise SystemExit(f"{path}: job {job.name} waits for unknown jobs {sorted(missing)}")
    return jobs


def ready(job: Job, by_name: dict[str, Job]) -> bool | None:
    """True: may start; False: wait; None: can never start (a job it needs failed)."""
    states = [by_name[n].status for n in job.after]
    if any(s in ("failed", "skipped") for s in states):
        return None
    return all(s == "done" for s in states)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jobs", type=Path)
    p.add_argument("--gpus", type=int, default=0, help="0 = every visible GPU")
    p.add_argument("--deadline-s", type=float, default=0, help="start no job after this many seconds")
    p.add_argument("--log-dir", type=Path, default=Path("runs/queue-logs"))
    args = p.parse_args()
    gpus = args.gpus or _gpu_count()
    jobs = parse(args.jobs)
    by_name = {j.name: j for j in jobs}
    args.log_dir.mkdir(parents=True, exist_ok=True)
    running: dict[int, tuple[Job, subprocess.Popen, float]] = {}
    t0 = time.time()
    while any(j.status in ("waiting", "running") for j in jobs):
        for gpu, (job, proc, started) in list(running.items()):
            if proc.poll() is not None:
                job.status, job.seconds = ("done" if proc.returncode == 0 else "failed"), time.time() - started
                print(f"{job.status:7} {job.seconds:6.0f} s  {job.name}", flush=True)
                del running[gpu]
        late = args.deadline_s and time.time() - t0 > args.deadline_s
        for job in jobs:
            if job.status != "waiting":
                continue
            state = ready(job, by_name)
            if state is None or late:
                job.status = "skipped"
                print(f"skipped        {job.name}", flush=True)
            elif state and not late and len(running) < gpus:
                gpu = next(g for g in range(gpus) if g not in running)
                running[gpu] = (job, _start(job, gpu, args.log_dir), time.time())
                job.status = "running"
        time.sleep(0.5)
    return 0 if all(j.status == "done" for j in jobs) else 1


def _start(job: Job, gpu: int, log_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu), "PYTHONUNBUFFERED": "1"}
    log = open(log_dir / f"{job.name}.log", "w")
    cmd = [sys.executable, "-m", "ffpipe", "train", *job.args, "--set", "run.progress=false"]
    log.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
    log.flush()
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def _gpu_count() -> int:
    import torch

    return max(1, torch.cuda.device_count())


if __name__ == "__main__":
    sys.exit(main())
