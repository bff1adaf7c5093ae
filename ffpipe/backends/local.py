"""The local backend: every stage in this process. One stage is the sequential trainer (the
reference every backend must match); several stages run as threads joined by bounded queues,
one GPU each where there are GPUs. Each stage runs exactly what a torchrun rank or a Ray actor
runs (`run_one_stage`); only the channels differ. A local run does not restart itself: a failure
in one process is not a lost node."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from ffpipe.config import Config
from ffpipe.telemetry.progress import Progress
from ffpipe.run.folder import RunFolder
from ffpipe.run.setup import RunSetup, setup_process, stage_device
from ffpipe.run.start import RunStart, announce, begin_run, interrupted_names
from ffpipe.run.stage_process import run_one_stage
from ffpipe.run.summary import finish_run, stage_report
from ffpipe.transport import open_channel

STOP_GRACE_S = 10.0  # after Ctrl-C: the stages finish the step they are in and stop


def train_local(cfg: Config, resume: Path | None) -> tuple[Path, dict]:
    setup_process(cfg)
    setup, start = begin_run(cfg, RunFolder.open(resume) if resume else None, stage_device(cfg, 0))
    announce(start)
    progress = Progress(setup.plan.total_steps, setup.num_stages, cfg.run.progress)
    t0 = time.perf_counter()
    with interrupted_names(start.folder):
        reports, history = run_local(setup, start, progress.update, progress.result)
    summary = finish_run(setup, start.folder, reports, history, time.perf_counter() - t0)
    return start.folder.path, summary


def run_local(setup: RunSetup, start: RunStart, on_log=None, on_result=None) -> tuple[list[dict], list[dict]]:
    """Train every stage to the end of the stream; returns each stage's report and the history
    of evaluations."""
    cfg, num_stages = setup.cfg, setup.num_stages
    abort = threading.Event()
    # channels[k] joins stage k to stage k + 1
    channels = [open_channel("threads", cfg.pipeline, name=f"stage {k} -> stage {k + 1}", abort=abort)
                for k in range(num_stages - 1)]
    results: list = [None] * num_stages

    def stage(k: int) -> None:
        results[k] = run_one_stage(setup, start, start.topology.place(k), stage_device(cfg, k),
                                   lambda peer: channels[min(k, peer)], on_log, on_result)

    if num_stages == 1:
        stage(0)  # the sequential trainer: in the calling thread
    else:
        _run_threads(stage, num_stages, abort)
    loggers = [logger for logger, _ in results]
    return [stage_report(logger) for logger in loggers], results[-1][1].history


def _run_threads(stage, num_stages: int, abort: threading.Event) -> None:
    errors: list[BaseException] = []
    finished = [threading.Event() for _ in range(num_stages)]

    def body(k: int) -> None:
        try:
            stage(k)
        except BaseException as err:  # noqa: BLE001 - handed to the caller below
            if not abort.is_set():
                errors.append(err)
            abort.set()
        finally:
            finished[k].set()

    for k in range(num_stages):
        threading.Thread(target=body, args=(k,), name=f"ffpipe-stage-{k}", daemon=True).start()
    # Waits on events, not Thread.join: a join cut short by Ctrl-C can leave CPython (3.11)
    # believing a running thread has stopped.
    try:
        for done in finished:
            while not done.wait(0.2):  # Ctrl-C reaches this thread within the wait
                pass
    except KeyboardInterrupt:
        abort.set()  # every channel wait ends within its poll interval; each stage stops
        deadline = time.monotonic() + STOP_GRACE_S
        for done in finished:
            done.wait(max(0.0, deadline - time.monotonic()))
        raise
    if errors:
        raise errors[0]
