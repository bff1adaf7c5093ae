"""The Ray transport (pipeline.transport = "ray"): messages move as Ray objects between actors.

Ray lets only the process that made a collective group pass Ray Direct Transport objects, so the
driver moves the references (never the data) from each stage's outbox to the next stage's inbox:
  actor side   RayMailbox, mixed into the stage actor: an inbox and an outbox, each a bounded
               queue from open_channel("ray"), and the Ray methods the driver calls on them:
               deliver (into the inbox), peek and take_* (out of the outbox);
  driver side  RefRouter: per boundary k -> k+1, one collect in flight on stage k and at most
               `queue_depth` deliveries stage k+1 has not yet taken in.
Every hop keeps the bound, so a fast stage waits instead of filling memory, and every message
keeps its order (one caller, one thread per concurrency group, a sequence number checked on
arrival). The data goes actor to actor: Ray Direct Transport over NCCL between GPU actors, the
object store (or gloo) on CPU.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import ray

from ffpipe.config import PipelineConfig
from ffpipe.errors import PipelineError
from ffpipe.pipeline.messages import Message, Phase
from ffpipe.transport import open_channel

# Concurrency groups of the mailbox's methods: one thread each, so that messages keep their order.
MAILBOX_GROUPS = {"inbox": 1, "outbox": 1}


class RayMailbox:
    """The actor's end of the Ray transport (a mixin: Ray finds the methods on the actor class)."""

    def open_mailbox(self, pipeline: PipelineConfig, stage_id: int, abort: threading.Event) -> None:
        self.inbox = open_channel("ray", pipeline, name=f"stage {stage_id} inbox", abort=abort)
        self.outbox = open_channel("ray", pipeline, name=f"stage {stage_id} outbox", abort=abort)
        self._mailbox_stage, self._expected_seq, self._staged = stage_id, 0, None

    def mailbox_link(self, peer: int, rank: int):
        """The channel to rank `peer`: the driver fills the inbox and drains the outbox."""
        return self.inbox if peer < rank else self.outbox

    @ray.method(concurrency_group="inbox")
    def deliver(self, seq: int, msg: Message) -> None:
        if seq != self._expected_seq:  # Ray keeps one caller's calls in order; check it anyway
            raise RuntimeError(f"stage {self._mailbox_stage} received message {seq}, expected {self._expected_seq}")
        self._expected_seq += 1
        self.inbox.send(msg)

    # Ray Direct Transport allows one return value, so the driver learns what comes next (peek)
    # and takes it (take_*) in two calls of the same single-threaded group, in that order.
    @ray.method(concurrency_group="outbox")
    def peek(self) -> tuple[int, int]:
        self._staged = self.outbox.recv()
        return int(self._staged.phase), self._staged.step

    @ray.method(concurrency_group="outbox")
    def take_object_store(self) -> Message:
        return self._take()

    @ray.method(concurrency_group="outbox", tensor_transport="nccl")
    def take_nccl(self) -> Message:
        return self._take()

    @ray.method(concurrency_group="outbox", tensor_transport="gloo")
    def take_gloo(self) -> Message:
        return self._take()

    def _take(self) -> Message:
        msg, self._staged = self._staged, None
        return msg


def tensor_transport(pipeline: PipelineConfig, gpus: int) -> str:
    """pipeline.ray_tensor_transport for actors with `gpus` GPUs each: object_store, nccl or gloo."""
    choice = pipeline.ray_tensor_transport
    if choice == "auto":
        return "nccl" if gpus else "object_store"
    if choice == "nccl" and not gpus:
        raise PipelineError("pipeline.ray_tensor_transport = 'nccl' needs GPU actors; use 'auto', "
                            "'object_store' or 'gloo' on CPUs")
    return choice


def connect(actors: list, pipeline: PipelineConfig, gpus: int) -> None:
    """The Ray collective group Ray Direct Transport needs (none for the object store)."""
    backend = {"nccl": "nccl", "gloo": "torch_gloo"}.get(tensor_transport(pipeline, gpus))
    if backend:
        from ray.experimental.collective import create_collective_group

        create_collective_group(actors, backend=backend)


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
    """The driver's part: moves references from each stage's outbox to the next stage's inbox."""

    def __init__(self, actors: list, pipeline: PipelineConfig, gpus: int):
        self.depth = pipeline.queue_depth
        transport = tensor_transport(pipeline, gpus)
        self.links = [_Boundary(a, b, transport) for a, b in zip(actors, actors[1:])]
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
