"""What a stage process tells while it runs: its rows to the live loggers (run.loggers) and to the
run folder at the log cadence (a crash loses the last ROWS_EVERY_S of them, more in a long run
whose file has grown), the last stage's evaluations to the loggers, and a flight recorder that leaves a stack dump where the stage stalls.
Only replica 0 of a stage speaks; the flight recorder runs in every process. The writing is done
by a thread of its own: the stage's loop only hands it over (on a GPU, a loop that waited on a
file write would leave the device idle)."""
from __future__ import annotations

import queue
import sys
import threading
import time

from ffpipe.telemetry.flight import FlightRecorder
from ffpipe.telemetry.measure import Stopwatch
from ffpipe.telemetry.sinks import LiveMetrics, chosen, eval_scalars, stage_scalars

ROWS_EVERY_S = 2.0  # the stage's metric file is rewritten at a log step at most this often,
ROWS_BUSY = 0.05    # and the writer spends at most this share of the time on it (a long run's file grows)
POINTS_WAITING = 64  # log points handed to the live loggers and not yet sent, at most (MetricsFeed)


class StageLive:
    def __init__(self, setup, start, place, on_log=None, on_result=None):
        cfg, folder = setup.cfg, start.folder
        self.folder, self.stage_id = folder, place.stage
        self.outer_log, self.outer_result = on_log, on_result
        self.logger = None  # the stage's StageLogger, once open (its rows are what is written)
        self._rows_due, self._rows_lock, self._rows_queued = 0.0, threading.Lock(), False
        names = chosen(cfg.run.loggers) if place.lead else []
        self.metrics = LiveMetrics(names, folder, place.stage, _run_name(folder), cfg.to_dict()) if names else None
        self.writer = Writer(f"ffpipe-telemetry-{place.stage}")
        self.feed = MetricsFeed(self.metrics, self.writer, names, place.stage) if names else None
        self.recorder = FlightRecorder(folder, place.stage, start.attempt.number, cfg.pipeline.timeout_s / 2).start()

    def on_log(self, stage_id: int, step: int, rows: list[dict]) -> None:
        if self.outer_log is not None:
            self.outer_log(stage_id, step, rows)
        with self.logger.telemetry:  # what the loop itself spends: handing over
            if self.feed is not None:
                self.feed.send(step, stage_scalars(rows))
            if time.monotonic() > self._rows_due and not self._rows_queued:
                self._rows_queued = True  # one write waits at most: it takes the newest rows
                self.writer.submit(self._write_rows_paced)

    def _write_rows_paced(self) -> None:
        """The writer's rows write; the next one is due ROWS_EVERY_S later, or later still where
        the file has grown so that writing it would take more than ROWS_BUSY of the time."""
        self._rows_queued = False
        t0 = time.monotonic()
        self.write_rows()
        took = time.monotonic() - t0
        self._rows_due = time.monotonic() + max(ROWS_EVERY_S, took / ROWS_BUSY)

    def write_rows(self) -> None:
        """The stage's metric file with every row so far: from the writer, and at checkpoints. The
        rows are taken inside the lock, so a later write never holds fewer rows than an earlier."""
        with self._rows_lock:
            self.folder.write_stage_metrics(self.stage_id, list(self.logger.rows))

    def on_result(self, result: dict) -> None:
        if self.outer_result is not None:
            self.outer_result(result)
        if self.feed is not None:  # evaluations are few and each one wanted: never skipped
            self.writer.submit(self.metrics.write, result["step"], eval_scalars(result))

    def why_stalled(self) -> str:
        """Where the flight recorder's dump is, for a failure message ('' when it wrote none)."""
        return f" (its stacks and last events: {self.folder}/{self.recorder.dumped})" if self.recorder.dumped else ""

    def close(self) -> None:
        self.recorder.stop()
        self.writer.close()
        if self.logger is not None:
            self.logger.telemetry_writer_s = self.writer.busy.total
        if self.feed is not None:
            self.feed.close()
            self.metrics.close()


class MetricsFeed:
    """A stage's log points to its live loggers through the writer, at most `waiting` of them not
    yet sent. A logger slower than the log cadence (a remote MLflow server answering in 100 ms,
    with a point every 20 ms) would otherwise hold every point in memory and keep the run from
    ending until all were sent. Points past that are skipped and counted, and said once on stderr
    (and their number at the end); the run folder's metric rows keep every one."""

    def __init__(self, metrics, writer: "Writer", names: list[str], stage_id: int, waiting: int = POINTS_WAITING):
        self.metrics, self.writer, self.names, self.stage_id = metrics, writer, names, stage_id
        self._slots = threading.BoundedSemaphore(waiting)
        self.sent = self.skipped = 0

    def send(self, step: int, scalars: dict[str, float]) -> None:
        if not self._slots.acquire(blocking=False):
            self.skipped += 1
            if self.skipped == 1:
                self._say("fall behind the log cadence: the points they have not taken are skipped "
                          "while they catch up (the run folder's metrics keep every row; a larger "
                          "train.log_every sends fewer)")
            return
        self.writer.submit(self._write, step, scalars)

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        try:
            self.metrics.write(step, scalars)
            self.sent += 1
        finally:
            self._slots.release()

    def close(self) -> None:
        """After the writer has ended: the number of points skipped, if any."""
        if self.skipped:
            self._say(f"were sent {self.sent:,} log points and skipped {self.skipped:,}")

    def _say(self, what: str) -> None:
        print(f"ffpipe: stage {self.stage_id}: the live loggers ({', '.join(self.names)}) {what}",
              file=sys.stderr, flush=True)


class Writer:
    """A thread that runs what it is handed, in order; close() runs what is left and ends it. A
    write that fails is named on stderr; the run goes on (the checkpoints write the rows too)."""

    def __init__(self, name: str):
        self.busy = Stopwatch()  # the thread's own time at work
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn, *args) -> None:
        self._queue.put((fn, args))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, args = item
            try:
                with self.busy:
                    fn(*args)
            except Exception as err:  # noqa: BLE001 - telemetry never stops the training
                print(f"ffpipe: {self._thread.name}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)


def _run_name(folder) -> str:
    return str(folder).rstrip("/").rsplit("/", 1)[-1]
