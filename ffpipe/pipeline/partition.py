"""Units to stages: pure functions from unit costs (or explicit boundaries) to contiguous stages.

A stage is given by the index of its first unit; stage k owns units [starts[k], starts[k+1]).
"""
from __future__ import annotations

from ffpipe.errors import ConfigError


def balanced_starts(costs: list[float], num_stages: int, cut_costs: list[float] | None = None,
                    replicas: list[int] | tuple[int, ...] | None = None, floor: float = 0.0) -> list[int]:
    """Contiguous stages that minimise the cost of the slowest stage (exact dynamic programme).
    `cut_costs[i]`: what a cut before unit i adds to both stages beside it (moving the tensors
    that cross it); none by default. `replicas[k]`: copies of stage k, each doing 1/replicas[k]
    of its work, so a replicated stage takes more units. `floor`: seconds stage 0 takes at least,
    whatever its units (a loader that decodes on CPU threads beside its step: `stage_cost`).

    Among equally good splits the one with the earliest boundaries wins, so the result is stable.
    """
    n = len(costs)
    _check_count(n, num_stages)
    cut = cut_costs or [0.0] * (n + 1)
    copies = replicas or [1] * num_stages
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[s][i]: smallest max-stage cost splitting units [0, i) into s stages; last[s][i]: last start.
    best = [[inf] * (n + 1) for _ in range(num_stages + 1)]
    last = [[0] * (n + 1) for _ in range(num_stages + 1)]
    best[0][0] = 0.0
    for s in range(1, num_stages + 1):
        for i in range(s, n + 1):
            for j in range(s - 1, i):
                work = stage_cost(prefix[i] - prefix[j] + _cuts_of(cut, j, i, n), j, floor)
                value = max(best[s - 1][j], work / copies[s - 1])
                if value < best[s][i] - 1e-12:
                    best[s][i], last[s][i] = value, j
    starts, i = [], n
    for s in range(num_stages, 0, -1):
        i = last[s][i]
        starts.append(i)
    return starts[::-1]


def stage_cost(work: float, first: int, floor: float) -> float:
    """Seconds a step of the stage starting at unit `first` takes for `work` seconds of its units
    and cuts: stage 0 waits for its loader's batches where the loader decodes beside the step,
    so it takes the longer of the two."""
    return max(work, floor) if first == 0 else work


def _cuts_of(cut_costs: list[float], first: int, end: int, num_units: int) -> float:
    """What the cuts around units [first, end) cost that stage (none at the pipeline's ends)."""
    return (cut_costs[first] if first > 0 else 0.0) + (cut_costs[end] if end < num_units else 0.0)


def stage_seconds(costs: list[float], cut_costs: list[float], starts: list[int],
                  replicas: tuple[int, ...] | None = None, floor: float = 0.0) -> list[float]:
    """Predicted seconds per step of every stage (per replica: its share of the batch)."""
    n = len(costs)
    seconds = [stage_cost(sum(costs[r.start:r.stop]) + _cuts_of(cut_costs, r.start, r.stop, n), r.start, floor)
               for r in stage_ranges(starts, n)]
    return [s / r for s, r in zip(seconds, replicas or [1] * len(seconds))]


def stage_starts(num_units: int, num_stages: int, boundaries: list[int] | None = None,
                 costs: list[float] | None = None, cut_costs: list[float] | None = None,
                 replicas: list[int] | None = None, floor: float = 0.0) -> list[int]:
    """First unit of every stage: explicit `boundaries` (first units of stages 1..S-1) if given,
    else balanced by `costs` (equal costs when none are known) over `replicas` per stage."""
    _check_count(num_units, num_stages)
    if boundaries:
        if len(boundaries) != num_stages - 1 or boundaries[-1] >= num_units:
            raise ConfigError(f"pipeline.boundaries = {boundaries} must give the first unit of "
                              f"each of stages 1..{num_stages - 1}, each below {num_units} "
                              f"(the model has {num_units} units)")
        return [0, *boundaries]
    return balanced_starts(costs or [1.0] * num_units, num_stages, cut_costs if costs else None, replicas, floor)


def stage_ranges(starts: list[int], num_units: int) -> list[range]:
    return [range(a, b) for a, b in zip(starts, [*starts[1:], num_units])]


def _check_count(num_units: int, num_stages: int) -> None:
    if num_stages > num_units:
        raise ConfigError(f"pipeline.stages = {num_stages} but the model has only {num_units} "
                          f"units (learners); use at most {num_units} stages")
