"""Channels between neighbouring stages: send, recv, close. Bounded and ordered.

`pipeline.queue_depth` is the number of batches a stage may have sent that its neighbour has not
taken yet; a stage that is that far ahead waits. Each transport keeps it so:
  threads  a queue of that size between two stage threads (transport/local.py);
  p2p      that many unacknowledged messages per direction (transport/p2p.py);
  ray      each actor's inbox and outbox hold that many and the driver moves that many at a
           time (transport/ray.py): the Ray transport's hops each keep the bound.
Every wait on a neighbour ends after `pipeline.timeout_s` with an error naming it.

  local.py   QueueChannel: a bounded in-process queue (stage threads; a Ray actor's mailbox)
  p2p.py     P2PChannel: torch.distributed point-to-point, NCCL between GPUs, gloo on CPU
  ray.py     the Ray transport: the actors' mailboxes and the driver's router of references
  groups.py  every torch.distributed process group of a pipeline (torchrun and Ray alike)
"""
from __future__ import annotations

import threading

from ffpipe.config import PipelineConfig
from ffpipe.pipeline.messages import Channel


def open_channel(kind: str, pipeline: PipelineConfig, *, name: str = "", abort: threading.Event | None = None,
                 peer: int | None = None, device=None, groups: tuple = (None, None),
                 peer_stage: int | None = None) -> Channel:
    """`threads`: an in-process queue named `name` between stage threads, ended early by `abort`;
    `ray`: the same queue as a Ray actor's inbox or outbox, which the driver fills or drains
    (transport/ray.py); `p2p`: torch.distributed point-to-point with rank `peer` (of stage
    `peer_stage`; default: the rank) over `groups` (tensors, headers/acknowledgements)."""
    depth, timeout = pipeline.queue_depth, pipeline.timeout_s
    if kind in ("threads", "ray"):
        from ffpipe.transport.local import QueueChannel
        return QueueChannel(depth, timeout, abort or threading.Event(), name)
    if kind == "p2p":
        from ffpipe.transport.p2p import P2PChannel
        return P2PChannel(peer, peer if peer_stage is None else peer_stage, device, depth, timeout, *groups)
    raise ValueError(f"unknown channel kind {kind!r}")


__all__ = ["Channel", "open_channel"]
