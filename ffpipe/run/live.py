"""What a stage process tells while it runs: its rows to the live loggers (run.loggers) and to the
run folder at the log cadence (a crash loses at most ROWS_EVERY_S of them), the last stage's
evaluations to the loggers, and a flight recorder that leaves a stack dump where the stage stalls.
Only replica 0 of a stage speaks; the flight recorder runs in every process."""
from __future__ import annotations

import time

from ffpipe.telemetry.flight import FlightRecorder
from ffpipe.telemetry.sinks import LiveMetrics, chosen, eval_scalars, stage_scalars

ROWS_EVERY_S = 2.0  # the stage's metric file is rewritten at a log step at most this often


class StageLive:
    def __init__(self, setup, start, place, on_log=None, on_result=None):
        cfg, folder = setup.cfg, start.folder
        self.folder, self.stage_id, self.lead = folder, place.stage, place.lead
        self.outer_log, self.outer_result = on_log, on_result
        self.logger = None  # the stage's StageLogger, once open (its rows are what is written)
        self._rows_written = 0.0
        names = chosen(cfg.run.loggers) if place.lead else []
        self.metrics = LiveMetrics(names, folder, place.stage, _run_name(folder), cfg.to_dict()) if names else None
        self.recorder = FlightRecorder(folder, place.stage, start.attempt.number, cfg.pipeline.timeout_s / 2).start()

    def on_log(self, stage_id: int, step: int, rows: list[dict]) -> None:
        if self.outer_log is not None:
            self.outer_log(stage_id, step, rows)
        with self.logger.telemetry:
            if self.metrics is not None:
                self.metrics.write(step, stage_scalars(rows))
            if time.monotonic() - self._rows_written > ROWS_EVERY_S:
                self.folder.write_stage_metrics(stage_id, self.logger.rows)
                self._rows_written = time.monotonic()

    def on_result(self, result: dict) -> None:
        if self.outer_result is not None:
            self.outer_result(result)
        if self.metrics is not None:
            self.metrics.write(result["step"], eval_scalars(result))

    def why_stalled(self) -> str:
        """Where the flight recorder's dump is, for a failure message ('' when it wrote none)."""
        return f" (its stacks and last events: {self.folder}/{self.recorder.dumped})" if self.recorder.dumped else ""

    def close(self) -> None:
        self.recorder.stop()
        if self.metrics is not None:
            self.metrics.close()


def _run_name(folder) -> str:
    return str(folder).rstrip("/").rsplit("/", 1)[-1]
