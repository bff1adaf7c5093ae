"""In-process channel between stage threads: a bounded queue that notices a failed pipeline."""
from __future__ import annotations

import queue
import threading
import time

from ffpipe.errors import NeighbourError
from ffpipe.pipeline.messages import Message

POLL_S = 0.05


class QueueChannel:
    def __init__(self, depth: int, timeout_s: float, abort: threading.Event, name: str):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._timeout_s = timeout_s
        self._abort = abort
        self._name = name

    def _wait(self, op):
        deadline = time.monotonic() + self._timeout_s
        while not self._abort.is_set():
            try:
                return op(POLL_S)
            except (queue.Full, queue.Empty):
                if time.monotonic() > deadline:
                    raise NeighbourError(f"{self._name}: no progress for {self._timeout_s:.0f} s "
                                        "(pipeline.timeout_s); the neighbouring stage is stuck") from None
        raise NeighbourError(f"{self._name}: another stage failed; stopping")

    def send(self, msg: Message) -> None:
        self._wait(lambda t: self._queue.put(msg, timeout=t))

    def recv(self) -> Message:
        return self._wait(lambda t: self._queue.get(timeout=t))

    def in_flight(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        pass
