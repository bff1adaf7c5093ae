"""Channels of a replicated stage: pieces from several senders, pieces to several receivers.

Built on the plain channels (one per pair of ranks that exchange rows, see pipeline/topology.py)
and used only where a neighbouring stage is replicated; an unreplicated pipeline keeps its plain
channels. The last stage's replicas hand their evaluated shards to replica 0, which alone holds
the evaluation sink.
"""
from __future__ import annotations

from ffpipe.pipeline.messages import Message, Phase
from ffpipe.pipeline.shards import join, split


class FanIn:
    """Receives one piece of every batch from each sender, in row order, and joins them."""

    def __init__(self, channels: list):
        self.channels = channels

    def recv(self) -> Message:
        return join([channel.recv() for channel in self.channels])

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


class FanOut:
    """Sends each receiver (replicas `targets` of a stage with `replicas`) its rows of every batch."""

    def __init__(self, channels: list, replicas: int, targets: list[int]):
        self.channels, self.replicas, self.targets = channels, replicas, targets

    def send(self, msg: Message) -> None:
        for channel, piece in zip(self.channels, split(msg, self.replicas, self.targets)):
            channel.send(piece)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


class ShardToLead:
    """A last-stage replica other than 0: its evaluated shards and the stream's markers go to
    replica 0 (training batches end here: nothing after the last stage needs them)."""

    def __init__(self, channel):
        self.channel = channel

    def send(self, msg: Message) -> None:
        if msg.phase is not Phase.TRAIN:
            self.channel.send(msg)

    def close(self) -> None:
        self.channel.close()


class GatheringSink:
    """Last-stage replica 0's outbox: joins its own shard with the other replicas' and feeds the
    evaluation sink, as the unreplicated last stage would."""

    def __init__(self, sink, channels: list):
        self.sink, self.channels = sink, channels

    def send(self, msg: Message) -> None:
        if msg.phase is not Phase.TRAIN:
            msg = join([msg, *(channel.recv() for channel in self.channels)])
        self.sink.send(msg)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.sink.close()

    @property
    def history(self) -> list[dict]:
        return self.sink.history
