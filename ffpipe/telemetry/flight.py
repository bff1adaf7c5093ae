"""A flight recorder for a stage that stalls: its last events, and every thread's stack once it has
made no progress for a while.

The stage loop notes each message it receives, finishes and sends (kind, phase, epoch, step, time)
in a ring of the last EVENTS. A watchdog thread looks every few seconds; when the stage has noted
nothing for `after_s` (half of pipeline.timeout_s: before its neighbour's deadline ends the run)
it writes <run>/flight/stage-<k>-attempt-<a>.txt: the events, then the Python stack of every
thread (the blocking call is on top of the stage's). Where NCCL keeps its own flight recorder
(TORCH_NCCL_TRACE_BUFFER_SIZE > 0 on a GPU stage), its trace is written beside it (.nccl.pickle).
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections import deque

EVENTS = 256


class FlightRecorder:
    def __init__(self, folder, stage_id: int, attempt: int, after_s: float):
        self.folder, self.stage_id, self.after_s = folder, stage_id, after_s
        self.name = f"flight/stage-{stage_id}-attempt-{attempt}.txt"
        self.events: deque = deque(maxlen=EVENTS)
        self.dumped: str | None = None  # the file written, once written
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ffpipe-flight-recorder", daemon=True)

    def start(self) -> "FlightRecorder":
        self._thread.start()
        return self

    def note(self, kind: str, msg) -> None:
        """One event of the stage loop (no I/O: a deque append)."""
        self.events.append((time.time(), kind, msg.phase.name, msg.epoch, msg.step))
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(min(5.0, self.after_s / 4)):
            idle = time.monotonic() - self._last
            if idle > self.after_s and self.dumped is None:
                self.dump(idle)

    def dump(self, idle: float) -> str:
        """Write the events and every thread's stack; returns the file's name in the run folder."""
        lines = [f"stage {self.stage_id} made no progress for {idle:.0f} s; pid {os.getpid()}", "",
                 "last events (time, what, phase, epoch, step):"]
        lines += [f"  {time.strftime('%H:%M:%S', time.localtime(t))}.{int(t % 1 * 1000):03d} {kind:<4} {phase} "
                  f"epoch {epoch} step {step}" for t, kind, phase, epoch, step in self.events]
        lines += ["", "stacks (most recent call last):"]
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            lines += ["", f"thread {names.get(ident, ident)}:", *(x.rstrip() for x in traceback.format_stack(frame))]
        self.folder.store.write_text(self.name, "\n".join(lines) + "\n")
        self._nccl_trace()
        self.dumped = self.name
        return self.name

    def _nccl_trace(self) -> None:
        """NCCL's own record of its collectives, where a GPU stage keeps one (not tested on CPU)."""
        if int(os.environ.get("TORCH_NCCL_TRACE_BUFFER_SIZE", "0") or 0) <= 0:
            return
        try:
            import torch

            trace = torch._C._distributed_c10d._dump_nccl_trace()
            self.folder.store.write_bytes(self.name.replace(".txt", ".nccl.pickle"), trace)
        except Exception:  # noqa: BLE001 - a build without NCCL, or no communicator yet
            pass
