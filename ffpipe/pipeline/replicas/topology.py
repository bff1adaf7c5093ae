"""Where every stage replica runs and which rows of a batch it holds.

S stages with R_k replicas each run on sum(R_k) processes, numbered stage by stage: stage k's
replicas are ranks offset(k) .. offset(k) + R_k - 1. Replica r of a stage with R replicas holds
rows [B*r // R, B*(r+1) // R) of every batch of B rows, so shards differ by at most one row and
are in batch order. A replica receives from every replica of the previous stage whose rows meet
its own (exactly one when both stages have as many replicas) and sends likewise.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


def shard_rows(batch: int, replicas: int, replica: int) -> tuple[int, int]:
    """(first row, end row) of `replica`'s shard of a batch of `batch` rows."""
    return batch * replica // replicas, batch * (replica + 1) // replicas


def _meet(count_a: int, a: int, count_b: int, b: int) -> bool:
    """Do shard a of count_a and shard b of count_b overlap, for batches of any size?"""
    lo = max(Fraction(a, count_a), Fraction(b, count_b))
    hi = min(Fraction(a + 1, count_a), Fraction(b + 1, count_b))
    return lo < hi


@dataclass(frozen=True)
class Place:
    """One process of the pipeline: its rank, its stage, its replica of that stage."""
    rank: int
    stage: int
    replica: int
    replicas: int  # of its stage

    @property
    def lead(self) -> bool:
        """Replica 0 speaks for its stage: it writes the checkpoints, metrics and reports."""
        return self.replica == 0


@dataclass(frozen=True)
class Topology:
    replicas: tuple[int, ...]  # per stage

    @classmethod
    def of(cls, replicas: list[int] | tuple[int, ...]) -> "Topology":
        return cls(tuple(int(r) for r in replicas))

    @property
    def num_stages(self) -> int:
        return len(self.replicas)

    @property
    def world(self) -> int:
        return sum(self.replicas)

    @property
    def replicated(self) -> bool:
        return any(r > 1 for r in self.replicas)

    def rank(self, stage: int, replica: int = 0) -> int:
        return sum(self.replicas[:stage]) + replica

    def place(self, rank: int) -> Place:
        if not 0 <= rank < self.world:
            raise ValueError(f"rank {rank} is outside a pipeline of {self.world} processes")
        stage = 0
        while rank >= self.rank(stage + 1):
            stage += 1
        return Place(rank, stage, rank - self.rank(stage), self.replicas[stage])

    def stage_ranks(self, stage: int) -> list[int]:
        return [self.rank(stage, r) for r in range(self.replicas[stage])]

    def senders(self, place: Place) -> list[int]:
        """Ranks of the previous stage's replicas whose rows this replica receives, in row order."""
        return self._neighbours(place, place.stage - 1)

    def receivers(self, place: Place) -> list[int]:
        """Ranks of the next stage's replicas that receive rows of this replica, in row order."""
        return self._neighbours(place, place.stage + 1)

    def channel_pairs(self) -> list[tuple[int, int]]:
        """Every pair of ranks with a channel between them, in one order all ranks agree on:
        each replica with the next stage's replicas it sends to, and the last stage's replica 0
        with that stage's other replicas (which send it their evaluation shards)."""
        pairs = {(rank, peer) for rank in range(self.world) for peer in self.receivers(self.place(rank))}
        lead, *others = self.stage_ranks(self.num_stages - 1)
        pairs.update((lead, other) for other in others)
        return sorted(pairs)

    def _neighbours(self, place: Place, stage: int) -> list[int]:
        if not 0 <= stage < self.num_stages:
            return []
        count = self.replicas[stage]
        return [self.rank(stage, r) for r in range(count) if _meet(place.replicas, place.replica, count, r)]


def describe_topology(topology: Topology, how: str) -> str:
    """'4 stages (torchrun)', or with replicas '2 stages x [2, 2] replicas on 4 processes (torchrun)'."""
    stages = f"{topology.num_stages} stage{'s' if topology.num_stages > 1 else ''}"
    if not topology.replicated:
        return f"{stages} ({how})"
    return f"{stages} x {list(topology.replicas)} replicas on {topology.world} processes ({how})"
