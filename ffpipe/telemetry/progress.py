"""One console progress bar for the whole pipeline, with each stage's throughput."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total_steps: int, num_stages: int, enabled: bool = True, stream=None):
        self.total = max(1, total_steps)
        self.num_stages = num_stages
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.rates: list[float | None] = [None] * num_stages  # None: not heard from (another process)
        self._last_printed = -1.0
        self._last_step = -1
        self._t0 = time.perf_counter()

    def update(self, stage_id: int, step: int, rows: list[dict]) -> None:
        """Called with each stage's logged rows; draws when the last stage (the pipeline's pace) logs."""
        self.rates[stage_id] = rows[0]["images_per_s"]
        if not self.enabled or stage_id != self.num_stages - 1 or step == self._last_step:
            return
        self._last_step = step
        done = step / self.total
        # Without a terminal, print a line per tenth of the run instead of redrawing.
        if not self.tty and done - self._last_printed < 0.1 and step < self.total:
            return
        self._last_printed = done
        loss = sum(r["loss"] for r in rows) / len(rows)
        bar = "#" * int(done * 24)
        rates = " ".join("-" if r is None else f"{r:,.0f}" for r in self.rates)
        line = (f"[{bar:<24}] step {step}/{self.total} loss {loss:.3f} "
                f"acc(last) {rows[-1]['accuracy']:.3f} img/s per stage [{rates}] "
                f"{time.perf_counter() - self._t0:.0f}s")
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def result(self, result: dict) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\n")
        self.stream.write(f"epoch {result['epoch'] + 1}: test accuracy {result['test_accuracy']:.4f} "
                          f"(vote), {result['test_accuracy_last']:.4f} (last unit)\n")
        self.stream.flush()
