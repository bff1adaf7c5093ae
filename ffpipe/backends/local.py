"""The local backend: every stage in this process. One stage is the sequential trainer (the
reference every backend must match); several stages run as threads joined by bounded queues,
one GPU each where there are GPUs. Each stage runs exactly what a torchrun rank or a Ray actor
runs (`run_one_stage`); only the channels differ."""
from __future__ import annotations

import threading

from ffpipe.session import RunStart, run_one_stage
from ffpipe.trainer import RunSetup, stage_device, stage_report
from ffpipe.transport.local import QueueChannel


def run_local(setup: RunSetup, start: RunStart, on_log=None, on_result=None) -> tuple[list[dict], list[dict]]:
    """Train every stage to the end of the stream; returns each stage's report and the history
    of evaluations."""
    cfg, num_stages = setup.cfg, setup.num_stages
    abort = threading.Event()
    # channels[k] joins stage k to stage k + 1
    channels = [QueueChannel(cfg.pipeline.queue_depth, cfg.pipeline.timeout_s, abort,
                             f"stage {k} -> stage {k + 1}") for k in range(num_stages - 1)]
    results: list = [None] * num_stages

    def stage(k: int) -> None:
        results[k] = run_one_stage(setup, start, k, stage_device(cfg, k),
                                   lambda peer: channels[min(k, peer)], on_log, on_result)

    if num_stages == 1:
        stage(0)  # the sequential trainer: in the calling thread
    else:
        _run_threads(stage, num_stages, abort)
    loggers = [logger for logger, _ in results]
    return [stage_report(logger) for logger in loggers], results[-1][1].history


def _run_threads(stage, num_stages: int, abort: threading.Event) -> None:
    errors: list[BaseException] = []

    def body(k: int) -> None:
        try:
            stage(k)
        except BaseException as err:  # noqa: BLE001 - handed to the caller below
            if not abort.is_set():
                errors.append(err)
            abort.set()

    threads = [threading.Thread(target=body, args=(k,), name=f"ffpipe-stage-{k}") for k in range(num_stages)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
