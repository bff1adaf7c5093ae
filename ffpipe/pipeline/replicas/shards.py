"""Messages cut into replica shards and joined back, by rows of the whole batch.

Rows keep their batch order end to end: a replica's shard is a contiguous range of rows, pieces
are joined in row order, so the stage after a replicated one sees exactly the batch an
unreplicated stage would have passed on. An evaluation message's per-unit correct counts are a
sum over its rows: when a shard is cut, they travel with its first piece only (the others carry
zeros), so every row is counted once when the pieces meet again.
"""
from __future__ import annotations

import torch

from ffpipe.errors import PipelineError
from ffpipe.pipeline.messages import Message
from ffpipe.pipeline.replicas.topology import shard_rows


def rows_of(msg: Message, lo: int, hi: int, counts: bool = True) -> Message:
    """Rows [lo, hi) of the whole batch, out of `msg` (which holds rows from msg.offset on):
    views, no copies. Without `counts` the piece carries no correct counts (zeros)."""
    total = msg.batch_size
    a, b = lo - msg.offset, max(hi, lo) - msg.offset
    cut = lambda t: None if t is None else t[a:b]  # noqa: E731
    correct = msg.unit_correct
    if correct is not None and not counts:
        correct = torch.zeros_like(correct)
    return msg.replace(x=cut(msg.x), skips=tuple(cut(s) for s in msg.skips), y=cut(msg.y),
                       votes=cut(msg.votes), unit_correct=correct, offset=lo, total=total)


def split(msg: Message, replicas: int, targets: list[int]) -> list[Message]:
    """The pieces of `msg` for replicas `targets` (in row order) of a stage with `replicas`."""
    if msg.is_control:
        return [msg] * len(targets)
    total, first, end = msg.batch_size, msg.offset, msg.offset + len(msg.y)
    pieces = []
    for i, target in enumerate(targets):
        lo, hi = shard_rows(total, replicas, target)
        pieces.append(rows_of(msg, max(lo, first), min(hi, end), counts=i == 0))
    return pieces


def join(pieces: list[Message]) -> Message:
    """One message from pieces of the same batch, in row order."""
    head = pieces[0]
    for piece in pieces[1:]:
        if (piece.phase, piece.epoch, piece.step) != (head.phase, head.epoch, head.step):
            raise PipelineError(f"replicas out of step: a piece of {head.phase.name} epoch {head.epoch} "
                                f"step {head.step} met one of {piece.phase.name} epoch {piece.epoch} "
                                f"step {piece.step}; every replica must run the same config")
    if len(pieces) == 1 or head.is_control:
        return head
    rows = [p for p in pieces if len(p.y)] or pieces[:1]  # an empty piece adds no rows
    cat = lambda get: torch.cat([get(p) for p in rows]) if len(rows) > 1 else get(rows[0])  # noqa: E731
    correct = None
    if head.unit_correct is not None:
        correct = torch.stack([p.unit_correct for p in pieces]).sum(dim=0)
    return head.replace(x=cat(lambda p: p.x), y=cat(lambda p: p.y),
                        skips=tuple(cat(lambda p, i=i: p.skips[i]) for i in range(len(head.skips))),
                        votes=None if head.votes is None else cat(lambda p: p.votes),
                        unit_correct=correct, offset=rows[0].offset)


class ShardedSource:
    """Stage 0's inbox for one of its replicas: every replica reads the same batches (same seed)
    and keeps its own rows."""

    def __init__(self, source, replicas: int, replica: int):
        self.source, self.replicas, self.replica = source, replicas, replica

    def recv(self) -> Message:
        msg = self.source.recv()
        if msg.is_control:
            return msg
        lo, hi = shard_rows(len(msg.y), self.replicas, self.replica)
        return rows_of(msg, lo, hi)

    def close(self) -> None:
        self.source.close()
