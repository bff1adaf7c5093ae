"""Point-to-point channel over torch.distributed: NCCL between GPUs, gloo on CPU.

Named operations, one message at a time:
  send: wait for a credit if `depth` messages are unacknowledged, then isend header + tensors;
  recv: recv header (with a deadline), irecv the tensors it announces, acknowledge.
The header and the acknowledgements travel on a CPU (gloo) group even when tensors go over NCCL:
the receiver learns shapes as soon as the sender has *queued* a batch, so it can queue its own
kernels without waiting for the GPU, and every wait on a neighbour has a deadline. The tensors
travel on a group of the two ranks alone (transport/groups.py pair_groups), so that a stage's
receive from the previous stage and its send to the next run on separate NCCL streams.
"""
from __future__ import annotations

import datetime
import os
from collections import deque

import torch
import torch.distributed as dist

from ffpipe.errors import NeighbourError, PipelineError
from ffpipe.kernels.layout import is_nhwc
from ffpipe.pipeline.messages import Message, Phase

HEADER_LEN = 64
_FIXED = 14  # phase, epoch, step, offset, total, microbatch, of, rows, tensor count, skip count, 4 flags
_FIELDS = 8  # per tensor: dtype, layout, ndim, then up to 5 dims
_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool, torch.uint8, torch.int32]
_TRACE = os.environ.get("FFPIPE_TRACE_P2P") == "1"


def encode_header(msg: Message) -> torch.Tensor:
    """phase, epoch, step, shard offset and total, microbatch index, count and rows, which
    optional fields are present, then each tensor's dtype and shape."""
    tensors = msg.tensors()
    head = [int(msg.phase), msg.epoch, msg.step, msg.offset, msg.total, msg.micro, msg.micros, msg.step_rows,
            len(tensors), len(msg.skips),
            msg.x is not None, msg.y is not None, msg.votes is not None, msg.unit_correct is not None]
    for t in tensors:
        head += [_DTYPES.index(t.dtype), int(is_nhwc(t)), t.dim(), *t.shape, *[0] * (5 - t.dim())]
    if len(head) > HEADER_LEN:
        raise PipelineError(f"a message with {len(tensors)} tensors does not fit the p2p header")
    return torch.tensor(head + [0] * (HEADER_LEN - len(head)), dtype=torch.int64)


def decode_header(header: torch.Tensor) -> tuple[Message, list[tuple]]:
    h = header.tolist()
    phase, epoch, step, offset, total, micro, micros, step_rows, n, n_skips, *flags = h[:_FIXED]
    has_x, has_y, has_votes, has_correct = flags
    specs = []
    for i in range(n):
        dtype, channels_last, ndim, *dims = h[_FIXED + i * _FIELDS: _FIXED + (i + 1) * _FIELDS]
        specs.append((_DTYPES[dtype], bool(channels_last), tuple(dims[:ndim])))
    layout = (has_x, n_skips, has_y, has_votes, has_correct)
    base = Message(Phase(phase), epoch, step, offset=offset, total=total, micro=micro, micros=micros,
                   step_rows=step_rows)
    return base, [layout, *specs]


def _wire(t: torch.Tensor) -> torch.Tensor:
    """The tensor as it travels: contiguous, channels_last kept as NHWC without a copy."""
    if is_nhwc(t):
        return t.permute(0, 2, 3, 1)
    return t.contiguous()


def _empty(spec: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(buffer to receive into, tensor as the stage sees it)."""
    dtype, channels_last, shape = spec
    if channels_last:
        n, c, h, w = shape
        buf = torch.empty((n, h, w, c), dtype=dtype, device=device)
        return buf, buf.permute(0, 3, 1, 2)
    buf = torch.empty(shape, dtype=dtype, device=device)
    return buf, buf


def assemble(base: Message, layout: tuple, tensors: list[torch.Tensor]) -> Message:
    has_x, n_skips, has_y, has_votes, has_correct = layout
    it = iter(tensors)
    x = next(it) if has_x else None
    skips = tuple(next(it) for _ in range(n_skips))
    y = next(it) if has_y else None
    votes = next(it) if has_votes else None
    correct = next(it) if has_correct else None
    return base.replace(x=x, skips=skips, y=y, votes=votes, unit_correct=correct)


class P2PChannel:
    """One direction between this rank and `peer`. Create it on both ranks with the same args."""

    def __init__(self, peer: int, peer_stage: int, device: torch.device, depth: int, timeout_s: float,
                 data_group=None, control_group=None):
        self.peer, self.peer_stage = peer, peer_stage
        self.device = device
        self.depth = depth
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.data_group = data_group
        self.control_group = control_group
        self._in_flight: deque = deque()  # per unacknowledged message sent: its send handles
        self._ack = torch.zeros(1, dtype=torch.int64)
        self._acks: deque = deque()       # acknowledgements this receiver has sent, not yet done

    # -- sender side ---------------------------------------------------------------------
    def send(self, msg: Message) -> None:
        if len(self._in_flight) >= self.depth:
            self._wait_for_credit()
        header = encode_header(msg)
        works = [dist.isend(header, self.peer, group=self.control_group)]
        # An empty shard's tensors are announced by the header alone (nothing to move).
        works += [dist.isend(_wire(t), self.peer, group=self.data_group) for t in msg.tensors() if t.numel()]
        self._in_flight.append((works, msg))  # keeps the tensors alive until they are acknowledged
        self._trace("send", msg)

    def in_flight(self) -> int:
        """Messages sent and not yet acknowledged."""
        return len(self._in_flight)

    def _wait_for_credit(self) -> None:
        self._wait(lambda: dist.irecv(self._ack, self.peer, group=self.control_group), "an acknowledgement")
        works, _ = self._in_flight.popleft()
        works[0].wait()  # the header (gloo) is done once acknowledged; data over NCCL may still be queued

    # -- receiver side -------------------------------------------------------------------
    def recv(self) -> Message:
        header = torch.empty(HEADER_LEN, dtype=torch.int64)
        self._wait(lambda: dist.irecv(header, self.peer, group=self.control_group), "the next batch")
        base, (layout, *specs) = decode_header(header)
        pairs = [_empty(spec, self.device) for spec in specs]
        for buf, _ in pairs:
            if not buf.numel():
                continue
            if self.device.type == "cuda":
                # Only queues the copy on the GPU: the stage's kernels queue behind it, no host wait.
                dist.irecv(buf, self.peer, group=self.data_group).wait()
            else:
                self._wait(lambda b=buf: dist.irecv(b, self.peer, group=self.data_group),
                           "the tensors of a batch")
        self._acks.append(dist.isend(torch.ones(1, dtype=torch.int64), self.peer, group=self.control_group))
        while len(self._acks) > self.depth:
            self._acks.popleft().wait()
        msg = assemble(base, layout, [view for _, view in pairs])
        self._trace("recv", msg)
        return msg

    def close(self) -> None:
        """Sender: wait until the neighbour has every message; receiver: until it has every
        acknowledgement. Only then may this process exit."""
        while self._in_flight:
            self._wait_for_credit()
        while self._acks:
            self._acks.popleft().wait()

    def _wait(self, post, what: str) -> None:
        """Post one receive and wait for it, turning a dead or silent neighbour into an error
        that names its stage."""
        try:
            ok = post().wait(self.timeout)
        except RuntimeError as err:
            cause = str(err)
            if "Timed out" in cause:
                ok = False
            else:
                raise NeighbourError(f"lost stage {self.peer_stage} (rank {self.peer}) while waiting "
                                    f"for {what}: {cause.splitlines()[0][:300]}") from None
        if ok is False:
            raise NeighbourError(f"stage {self.peer_stage} (rank {self.peer}) sent nothing for "
                                f"{self.timeout.total_seconds():.0f} s while this stage waited for "
                                f"{what} (pipeline.timeout_s)", silent_rank=self.peer)

    def _trace(self, op: str, msg: Message) -> None:
        if _TRACE:
            print(f"[p2p rank {dist.get_rank()}] {op} peer={self.peer} {msg.phase.name} "
                  f"epoch={msg.epoch} step={msg.step}", flush=True)
