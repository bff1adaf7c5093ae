"""Driver side of the Ray-native transport: references from each stage's outbox to the next inbox.

Per boundary k -> k+1: one `collect` call in flight on stage k, and at most `depth` deliveries
that stage k+1 has not yet taken into its inbox. Stage k's outbox is bounded too, so a fast stage
waits instead of filling memory, and every message keeps its order (one caller, one thread per
concurrency group, and a sequence number checked on arrival). The data itself goes from actor to
actor (Ray Direct Transport over NCCL between GPU actors, the object store on CPU).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ffpipe.pipeline.messages import Phase


@dataclass
class _Boundary:
    source: object
    target: object
    tensor_transport: str        # object_store, nccl or gloo
    meta: object = None          # (phase, step) of the message being collected
    msg: object = None           # the message itself (a reference)
    delivering: deque = field(default_factory=deque)
    seq: int = 0
    done: bool = False

    def collect(self) -> None:
        self.meta = self.source.peek.remote()
        self.msg = getattr(self.source, f"take_{self.tensor_transport}").remote()


class RefRouter:
    def __init__(self, actors: list, depth: int, tensor_transport: str):
        self.depth = depth
        self.links = [_Boundary(a, b, tensor_transport) for a, b in zip(actors, actors[1:])]
        for link in self.links:
            link.collect()

    def refs(self) -> list:
        """What the driver should wait on besides the stages' run() calls."""
        out = []
        for link in self.links:
            if link.meta is not None:
                out.append(link.meta)
            out.extend(link.delivering)
        return out

    def advance(self) -> None:
        """Move every message that can move now (never blocks)."""
        for link in self.links:
            while self._step(link):
                pass

    def _step(self, link: _Boundary) -> bool:
        import ray

        if link.delivering:  # forget deliveries the next stage has taken in
            done, _ = ray.wait(list(link.delivering), num_returns=len(link.delivering), timeout=0)
            link.delivering = deque(r for r in link.delivering if r not in done)
        if link.meta is None or len(link.delivering) >= self.depth:
            return False
        if not ray.wait([link.meta], timeout=0)[0]:
            return False
        try:
            phase, _step = ray.get(link.meta)
        except ray.exceptions.RayError:
            link.meta = None  # the stage failed: its run() reports why
            return False
        link.delivering.append(link.target.deliver.remote(link.seq, link.msg))
        link.seq += 1
        link.meta = link.msg = None
        if phase == int(Phase.END):
            link.done = True
            return False
        link.collect()
        return True
