"""run_stage_loop: the one loop every backend runs, once per stage.

Backends differ only in how they start the processes (or threads) and which channels they hand
in: stage 0's inbox is the DataSource, the last stage's outbox the EvalSink, and between stages a
transport Channel (in-memory queue, torch.distributed p2p, Ray).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from ffpipe.telemetry.measure import Stopwatch, peak_memory_mib
from ffpipe.pipeline.messages import Inbox, Message, Outbox, Phase
from ffpipe.pipeline.stage import Stage

@dataclass
class LoopConfig:
    log_every: int
    checkpoint_every: int = 0          # steps; 0 = at the end of each epoch only
    # Saves the stage and its metrics (the run folder's business, not the loop's); None: no saving.
    save: Callable[["StageLogger", int], None] | None = None  # (logger, epoch)
    on_log: Callable[[int, int, list[dict]], None] | None = None  # (stage_id, step, rows)
    # What the stage did, as it happens: ("recv" | "done" | "sent", message); a flight recorder keeps them
    on_event: Callable[[str, Message], None] | None = None


@dataclass
class StageLogger:
    """Metric rows of one stage, and the time it spent waiting on its neighbours."""
    stage: Stage
    rows: list[dict] = field(default_factory=list)
    wait_recv: Stopwatch = field(default_factory=Stopwatch)
    wait_send: Stopwatch = field(default_factory=Stopwatch)
    # the live loggers' and metric rows' cost (ffpipe/run/live.py): the loop's time handing them
    # over, and their writer thread's time at work
    telemetry: Stopwatch = field(default_factory=Stopwatch)
    telemetry_writer_s: float = 0.0
    train_seconds: float = 0.0
    train_images: int = 0
    _epoch_t0: float | None = None
    _window_t0: float = field(default_factory=time.perf_counter)
    _window_images: int = 0
    _window_waits: tuple[float, float] = (0.0, 0.0)

    def trained(self, batch: int) -> None:
        if self._epoch_t0 is None:
            self._epoch_t0 = time.perf_counter()
        self.train_images += batch
        self._window_images += batch

    def log(self, epoch: int, queue_fill: int | None = None) -> list[dict]:
        """A row per unit: its loss and accuracy since the last log, and the stage's window (the
        time since then): images/s, the shares spent waiting on each neighbour and working, the
        fill of its outbox (`queue_fill` messages in flight), peak memory, lr."""
        stats = self.stage.read_stats()  # syncs with the device, so the window's time is real
        now = time.perf_counter()
        span = max(now - self._window_t0, 1e-9)
        recv, send = ((w.total - before) / span for w, before in zip((self.wait_recv, self.wait_send), self._window_waits))
        common = {"phase": "train", "epoch": epoch, "step": self.stage.step, "stage": self.stage.stage_id,
                  "lr": self.stage.lr, "images_per_s": self._window_images / span,
                  "wait_recv_s": self.wait_recv.total, "wait_send_s": self.wait_send.total,
                  "share_waiting_recv": recv, "share_waiting_send": send, "share_busy": max(0.0, 1.0 - recv - send),
                  "queue_fill": queue_fill, "peak_memory_mib": peak_memory_mib(self.stage.device),
                  "gpu_busy_s": self.stage.gpu_busy_s, "wall_s": now, "time": time.time()}
        rows = [{**common, **s} for s in stats]
        self.rows += rows
        self._window_t0, self._window_images = now, 0
        self._window_waits = (self.wait_recv.total, self.wait_send.total)
        return rows

    def epoch_done(self, epoch: int, queue_fill: int | None = None) -> list[dict]:
        if self.stage.pending_steps:
            rows = self.log(epoch, queue_fill)
        else:
            rows = []
            self.stage.sync("the end of the epoch")  # so the epoch's time includes its last kernels
        if self._epoch_t0 is not None:
            self.train_seconds += time.perf_counter() - self._epoch_t0
            self._epoch_t0 = None
        return rows


def run_stage_loop(stage: Stage, inbox: Inbox, outbox: Outbox, loop: LoopConfig,
                   logger: StageLogger | None = None) -> StageLogger:
    logger = logger or StageLogger(stage)
    event = loop.on_event or (lambda kind, msg: None)
    while True:
        with logger.wait_recv:
            msg = inbox.recv()
        event("recv", msg)
        if msg.phase is Phase.TRAIN:
            msg = stage.train_step(msg)
            logger.trained(msg.batch_size)
            # Logs and checkpoints count optimizer steps: after a step's last microbatch only
            if msg.ends_step and stage.step % loop.log_every == 0:
                _report(loop, stage, logger.log(msg.epoch, in_flight(outbox)))
            if msg.ends_step and loop.checkpoint_every and stage.step % loop.checkpoint_every == 0:
                _checkpoint(loop, logger, msg.epoch)
        elif msg.phase in (Phase.EVAL, Phase.VAL):
            msg = stage.eval_step(msg)
        elif msg.phase in (Phase.EPOCH_END, Phase.END):
            _report(loop, stage, logger.epoch_done(msg.epoch, in_flight(outbox)))
            _checkpoint(loop, logger, msg.epoch)
        event("done", msg)
        with logger.wait_send:
            outbox.send(msg)
        event("sent", msg)
        if msg.phase is Phase.END:
            return logger


def in_flight(outbox) -> int | None:
    """Messages the outbox has sent that the next stage has not taken yet (None: it cannot say)."""
    count = getattr(outbox, "in_flight", None)
    return count() if callable(count) else None


def _report(loop: LoopConfig, stage: Stage, rows: list[dict]) -> None:
    if rows and loop.on_log is not None:
        loop.on_log(stage.stage_id, stage.step, rows)


def _checkpoint(loop: LoopConfig, logger: StageLogger, epoch: int) -> None:
    if loop.save is not None:
        loop.save(logger, epoch)
