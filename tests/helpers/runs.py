"""Running ffpipe as users do (a subprocess, torchrun for several stages) and reading back what
a run learned, for the equivalence and resume tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from ffpipe.run.checkpoints import read_units, resume_step, saved
from ffpipe.run.folder import RunFolder
from tests.helpers import REPO

# Small and exact: deterministic kernels, one thread per process (thread count changes CPU
# reduction order, so the reference must use the same count as the stage processes).
EXACT = ["data.name=synthetic", "data.synthetic_train=96", "data.synthetic_test=40",
         "data.synthetic_shape=[3, 16, 16]", "train.batch_size=16", "train.eval_batch_size=32",
         "train.device=cpu", "train.deterministic=true", "run.plots=false", "run.progress=false",
         "train.log_every=2", "pipeline.dashboard=false"]  # Ray's dashboard: a dozen processes unlooked at
# Long enough (240 steps) to be killed in the middle, checkpointed every 4 steps.
LONG = EXACT + ["model.name=small_cnn", "model.granularity=layer", "train.epochs=40",
                "train.eval_every=100", "run.checkpoint_every=4"]
# Stage replicas (tests/multiprocess/test_replicas.py, tests/ray/test_ray_replicas.py): 6 steps of
# a small CNN, cut in two at unit 3 where the stages are replicated; SGD (Adam amplifies the
# reduction-order differences of near-zero gradients).
REPLICA_RUN = EXACT + ["model.name=small_cnn", "model.granularity=layer", "train.max_steps=6",
                       "train.eval_batch_size=30"]
REPLICA_SPLIT = ["pipeline.boundaries=[3]"]
SGD = ["train.optimizer=sgd", "train.lr=0.05"]
LAUNCH_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHON": sys.executable}


def ffpipe_cmd(overrides: list[str], stages: int = 0, resume: Path | None = None,
               replicas: list[int] | None = None, processes: int = 0) -> list[str]:
    """`ffpipe train` as a command; with `stages` (or `replicas` per stage), under torchrun as
    launch/torchrun.sh runs it, one process per stage (replica); `processes`: that many, with the
    backend and split left to `overrides`."""
    if processes:
        overrides = [*overrides, "pipeline.backend=torchrun"]
    processes = processes or (sum(replicas) if replicas else stages)
    if replicas and not resume:
        overrides = [*overrides, "pipeline.backend=torchrun", f"pipeline.replicas={replicas}"]
    elif stages and not resume:
        overrides = [*overrides, "pipeline.backend=torchrun", f"pipeline.stages={stages}"]
    sets = [a for o in overrides for a in ("--set", o)]
    args = ["train", *(["--resume", str(resume)] if resume else []), *sets]
    if processes:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={processes}", "-m", "ffpipe", *args]
    return [sys.executable, "-m", "ffpipe", *args]


def run_ffpipe(overrides: list[str], stages: int = 0, resume: Path | None = None, check: bool = True,
               timeout: int = 300, replicas: list[int] | None = None, processes: int = 0,
               threads: int = 1) -> subprocess.CompletedProcess:
    """`threads`: torch's per process (a reference must use the stages' count: it changes the
    order of CPU reductions)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    done = subprocess.run(ffpipe_cmd(overrides, stages, resume, replicas, processes), capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"ffpipe failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done


def sequential_run(folder: Path, overrides: list[str], threads: int = 1) -> Path:
    """The sequential trainer's run of `overrides` in `folder`: what every pipeline must equal
    (with as many torch threads as the pipeline's stage processes have)."""
    run_ffpipe(overrides + [f"run.dir={folder}"], timeout=600, threads=threads)
    return folder


def launch(args: list[str], new_session: bool = False, **env: str) -> subprocess.Popen:
    """A command started in the repository, one torch thread per process, its output captured
    (`new_session`: in a process group of its own, which os.killpg ends whole). It takes Ctrl-C
    (SIGINT) as from a terminal, also where the tests run in a background job, whose commands a
    shell starts with SIGINT ignored (and Python then never raises KeyboardInterrupt)."""
    return subprocess.Popen(args, cwd=REPO, env={**LAUNCH_ENV, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=new_session,
                            preexec_fn=interruptible)


def interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_checkpoint(run_dir: Path, stage_id: int, step: int, proc: subprocess.Popen, timeout: float = 120):
    """Wait until stage `stage_id` of the run in `run_dir` has checkpointed `step` or a later step
    (a file holding the stage's first unit); fail if the run (`proc`) ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "partition.json").exists():
            first = json.loads((run_dir / "partition.json").read_text())["starts"][stage_id]
            if any(f.step >= step and first in f.units for f in saved(RunFolder(run_dir))):
                return
        assert proc.poll() is None, f"the run ended before step {step}: {proc.communicate()[1][-3000:]}"
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint of stage {stage_id} at step {step} within {timeout} s")


def newest_units(run_dir: Path) -> tuple[int, dict]:
    """The newest complete step of a run and every unit's state at it ({"learner", "optimizer"})."""
    folder = RunFolder.open(run_dir)
    num_units = max(f.last for f in saved(folder)) + 1
    step = resume_step(folder, num_units)
    return step, read_units(folder, step, range(num_units))


def final_parameters(run_dir: Path) -> list[torch.Tensor]:
    """Every unit's learner tensors (weights, BN buffers) at the newest complete step, unit by unit."""
    _, units = newest_units(run_dir)
    return [t for unit in sorted(units) for t in units[unit]["learner"].values()]


def assert_same_parameters(a: Path, b: Path, atol: float = 0.0) -> None:
    """Every tensor equal (bit for bit, or within `atol`)."""
    pa, pb = final_parameters(a), final_parameters(b)
    assert len(pa) == len(pb) and len(pa) > 0
    for i, (x, y) in enumerate(zip(pa, pb)):
        diff = (x.float() - y.float()).abs().max().item() if x.numel() else 0.0
        ok = torch.equal(x, y) if atol == 0 else diff <= atol
        assert ok, f"tensor {i} differs: max |diff| {diff}"


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def scalar_tags(logdir) -> set[str]:
    """The scalar tags TensorBoard reads from a stage's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    return set(events.Tags()["scalars"])


def seen_live(run_dir: Path, proc: subprocess.Popen, stages: int = 2, timeout: float = 180) -> list[set[str]]:
    """Each stage's TensorBoard tags, once every stage has tags and metric rows in the run folder;
    fails if the run (`proc`) ends first: what is checked is seen while the run goes."""
    boards = [run_dir / "tensorboard" / f"stage-{k}" for k in range(stages)]
    deadline, seen = time.time() + timeout, [set()] * stages
    while not all(seen) or not all((run_dir / "metrics" / f"stage-{k}.parquet").exists() for k in range(stages)):
        assert proc.poll() is None, f"the run ended before every stage was seen: {seen}\n{proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, f"not every stage seen within {timeout} s: {seen}"
        seen = [scalar_tags(b) if b.is_dir() else set() for b in boards]
        time.sleep(0.5)
    return seen
