"""A stage process's inbox and outbox where replicas meet: pieces from several senders, pieces to
several receivers.

Built on the plain channels (one per pair of ranks that exchange rows, see topology.py) and used
only where a stage of the pipeline is replicated; an unreplicated pipeline keeps its plain
channels. The last stage's replicas hand their evaluated shards to replica 0, which alone holds
the evaluation sink. `link(rank)` is the channel between this process and the process `rank`.
"""
from __future__ import annotations

from typing import Callable

from ffpipe.pipeline.messages import Message, Phase
from ffpipe.pipeline.replicas.shards import ShardedSource, join, split
from ffpipe.pipeline.replicas.topology import Place, Topology

Link = Callable[[int], object]


def source_rows(source, place: Place):
    """Stage 0's inbox: the data source, or for one of several replicas its rows of every batch
    (which a streamed source decodes alone: it is already cut)."""
    if place.replicas == 1 or getattr(source, "sharded", False):
        return source
    return ShardedSource(source, place.replicas, place.replica)


def inbox_from(topology: Topology, place: Place, link: Link):
    """A later stage's inbox: the channel(s) from the previous stage's replicas whose rows this
    replica takes, joined in row order."""
    channels = [link(rank) for rank in topology.senders(place)]
    return FanIn(channels) if topology.replicated else channels[0]


def outbox_to(topology: Topology, place: Place, link: Link):
    """A stage before the last: the channel(s) to the next stage's replicas, each its rows."""
    receivers = topology.receivers(place)
    channels = [link(rank) for rank in receivers]
    if not topology.replicated:
        return channels[0]
    return FanOut(channels, topology.replicas[place.stage + 1], [topology.place(rank).replica for rank in receivers])


def outbox_to_sink(topology: Topology, place: Place, link: Link, open_sink: Callable[[], object]):
    """The last stage: replica 0 holds the evaluation sink (opened here) and gathers the other
    replicas' shards into it; they send it theirs. Returns (outbox, sink or None)."""
    last = topology.num_stages - 1
    if not place.lead:
        return ShardToLead(link(topology.rank(last, 0))), None
    sink = open_sink()
    others = topology.stage_ranks(last)[1:]
    return (GatheringSink(sink, [link(rank) for rank in others]) if others else sink), sink


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

    def in_flight(self) -> int | None:
        counts = [c.in_flight() for c in self.channels if callable(getattr(c, "in_flight", None))]
        return max(counts) if counts else None

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
