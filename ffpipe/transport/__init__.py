"""Channels between neighbouring stages: send, recv, close. Bounded and ordered.

`pipeline.queue_depth` is the number of batches a stage may have sent that its neighbour has not
taken yet; a stage that is that far ahead waits. Each transport keeps it so:
  threads  a queue of that size between two stage threads (transport/local.py);
  p2p      that many unacknowledged messages per direction (transport/p2p.py);
  ray      each actor's inbox and outbox hold that many and the driver moves that many at a
           time (transport/ray_refs.py): the Ray transport's hops each keep the bound.
Every wait on a neighbour ends after `pipeline.timeout_s` with an error naming it.
"""
from __future__ import annotations

import threading

from ffpipe.config import PipelineConfig
from ffpipe.transport.base import Channel


def open_channel(kind: str, pipeline: PipelineConfig, *, name: str = "", abort: threading.Event | None = None,
                 peer: int | None = None, device=None, groups: tuple = (None, None),
                 peer_stage: int | None = None) -> Channel:
    """`threads` (and a Ray actor's own inbox/outbox): an in-process queue named `name`, ended
    early by `abort`; `p2p`: torch.distributed point-to-point with rank `peer` (of stage
    `peer_stage`; default: the rank) over `groups` (tensors, headers/acknowledgements)."""
    depth, timeout = pipeline.queue_depth, pipeline.timeout_s
    if kind == "threads":
        from ffpipe.transport.local import QueueChannel
        return QueueChannel(depth, timeout, abort or threading.Event(), name)
    if kind == "p2p":
        from ffpipe.transport.p2p import P2PChannel
        return P2PChannel(peer, peer if peer_stage is None else peer_stage, device, depth, timeout, *groups)
    raise ValueError(f"unknown channel kind {kind!r}")


__all__ = ["Channel", "open_channel"]
