"""The local backend: every stage in this process. One stage is the sequential trainer (the
reference every backend must match); several stages run as threads joined by bounded queues,
one GPU each where there are GPUs."""
from __future__ import annotations

import threading

from ffpipe.pipeline.runtime import LoopConfig, run_stage_loop
from ffpipe.pipeline.sink import EvalSink
from ffpipe.session import RunStart, open_stage
from ffpipe.trainer import RunSetup, make_source, stage_device, stage_report
from ffpipe.transport.local import QueueChannel


def run_local(setup: RunSetup, start: RunStart, loop: LoopConfig, sink: EvalSink) -> list[dict]:
    """Train every stage to the end of the stream; returns each stage's report."""
    cfg, num_stages = setup.cfg, setup.num_stages
    opened = [open_stage(setup, start, k, stage_device(cfg, k)) for k in range(num_stages)]
    stages, loggers = [s for s, _ in opened], [log for _, log in opened]
    abort = threading.Event()
    channels = [QueueChannel(cfg.pipeline.queue_depth, cfg.pipeline.timeout_s, abort,
                             f"stage {k} -> stage {k + 1}") for k in range(num_stages - 1)]
    inboxes = [make_source(setup, stages[0].device, start.start_step), *channels]
    outboxes = [*channels, sink]
    if num_stages == 1:
        run_stage_loop(stages[0], inboxes[0], outboxes[0], loop, loggers[0])
    else:
        _run_threads(stages, inboxes, outboxes, loop, loggers, abort)
    return [stage_report(logger) for logger in loggers]


def _run_threads(stages, inboxes, outboxes, loop, loggers, abort: threading.Event) -> None:
    errors: list[BaseException] = []

    def body(k: int) -> None:
        try:
            run_stage_loop(stages[k], inboxes[k], outboxes[k], loop, loggers[k])
        except BaseException as err:  # noqa: BLE001 - handed to the caller below
            if not abort.is_set():
                errors.append(err)
            abort.set()

    threads = [threading.Thread(target=body, args=(k,), name=f"ffpipe-stage-{k}") for k in range(len(stages))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
