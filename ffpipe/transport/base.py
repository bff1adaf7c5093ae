"""The Channel protocol every transport implements."""
from __future__ import annotations

from typing import Protocol

from ffpipe.pipeline.messages import Message


class Channel(Protocol):
    """One direction between two neighbouring stages.

    send() blocks once `queue_depth` messages are in flight, so a fast stage waits instead of
    filling memory; recv() returns messages in the order they were sent and raises PipelineError
    when the neighbour is gone or silent for longer than the pipeline timeout.
    """

    def send(self, msg: Message) -> None: ...

    def recv(self) -> Message: ...

    def close(self) -> None: ...
