"""How many replicas each stage gets: the only reader of pipeline.replicas after the config.

A list gives them (and how many processes the run needs: its sum); 'auto' shares the processes
out among the stages by their measured costs and balances the split together with them.
"""
from __future__ import annotations

from ffpipe.config import PipelineConfig
from ffpipe.errors import ConfigError
from ffpipe.pipeline.partition import balanced_starts, stage_seconds


def wants_auto(pipeline: PipelineConfig) -> bool:
    """'auto': the replicas depend on how many processes (GPUs) the run has."""
    return pipeline.replicas == "auto"


def listed(pipeline: PipelineConfig) -> list[int] | None:
    """The replicas an explicit list gives (None: one per stage, or 'auto')."""
    return pipeline.replicas if isinstance(pipeline.replicas, list) and pipeline.replicas else None


def fix_processes(pipeline: PipelineConfig, processes: int, how: str) -> bool:
    """Whether pipeline.replicas says how many processes there are, checking `processes` (started
    `how`, e.g. 'torchrun started') against it: 'auto' needs one per stage at least, a list its sum."""
    if wants_auto(pipeline):
        if pipeline.stages > processes:
            raise ConfigError(f"pipeline.stages = {pipeline.stages} but {how} {processes} processes; "
                              "pipeline.replicas = 'auto' needs at least one per stage")
        return True
    wanted = listed(pipeline)
    if wanted and sum(wanted) != processes:
        raise ConfigError(f"pipeline.replicas = {wanted} needs {sum(wanted)} processes but {how} "
                          f"{processes}; use --nproc-per-node={sum(wanted)}")
    return bool(wanted)


def auto_replicas(costs: list[float], processes: int) -> list[int]:
    """Replicas per stage for `processes` processes: each extra one goes to the stage that is
    slowest per replica (its cost divided by its replicas), the stage a replica helps most."""
    if processes < len(costs):
        raise ValueError(f"{processes} processes cannot hold {len(costs)} stages")
    replicas = [1] * len(costs)
    for _ in range(processes - len(costs)):
        slowest = max(range(len(costs)), key=lambda k: (costs[k] / replicas[k], -k))
        replicas[slowest] += 1
    return replicas


def balanced_with_replicas(costs: list[float], cut_costs: list[float], num_stages: int,
                           processes: int, floor: float = 0.0) -> tuple[list[int], list[int]]:
    """A split and replicas per stage for `processes` processes, together: replicas go to the
    slowest stages of a split, then the split is balanced again over those replicas (a
    replicated stage takes more units), until the split stays; the best pair seen wins."""
    def slowest(starts, replicas):
        return max(stage_seconds(costs, cut_costs, starts, tuple(replicas), floor))

    starts = balanced_starts(costs, num_stages, cut_costs, floor=floor)
    best = None
    for _ in range(2 * num_stages):  # a handful of rounds settle it; the bound stops a cycle
        replicas = auto_replicas(stage_seconds(costs, cut_costs, starts, floor=floor), processes)
        rebalanced = balanced_starts(costs, num_stages, cut_costs, replicas, floor)
        for pair in ((starts, replicas), (rebalanced, replicas)):
            if best is None or slowest(*pair) < slowest(*best) - 1e-12:
                best = pair
        if rebalanced == starts:
            break
        starts = rebalanced
    return best


def choose_replicas(pipeline: PipelineConfig, starts: list[int], num_units: int, processes: int | None,
                    costs: list[float] | None = None, cut_costs: list[float] | None = None,
                    floor: float = 0.0) -> tuple[list[int], tuple[int, ...]]:
    """(split, replicas per stage): the config's list with the split as it is, or for 'auto' the
    `processes` shared out by the measured cost of each stage (equal costs where none were
    measured). Where the split was balanced on measured costs (a new run without boundaries; a
    resumed run keeps its split and measures nothing), it is balanced again with the replicas."""
    if not wants_auto(pipeline):
        return starts, tuple(listed(pipeline) or [1] * len(starts))
    if processes is None or processes < len(starts):
        raise ConfigError(f"pipeline.replicas = 'auto' needs at least as many processes (GPUs) as "
                          f"stages ({len(starts)}), got {processes}; use fewer pipeline.stages")
    if costs and not pipeline.boundaries:
        starts, replicas = balanced_with_replicas(costs, cut_costs, len(starts), processes, floor)
        return starts, tuple(replicas)
    costs = costs or [1.0] * num_units
    return starts, tuple(auto_replicas(stage_seconds(costs, [0.0] * (num_units + 1), starts, floor=floor),
                                       processes))


def fit_layout(starts: list[int], replicas: tuple[int, ...], num_units: int, processes: int,
               costs: list[float] | None = None, floor: float = 0.0) -> tuple[list[int], tuple[int, ...]]:
    """The layout (split, replicas) for at most `processes` processes: as it is where it fits;
    else fewer replicas first (the split kept, the rest shared out by stage cost), then fewer
    stages (the units balanced over as many stages as there are processes). What is learned is
    the same on every layout; only the speed changes."""
    if sum(replicas) <= processes:
        return starts, tuple(replicas)
    if processes < 1:
        raise ValueError("no process left to hold a stage")
    costs = costs or [1.0] * num_units
    if processes >= len(starts):
        seconds = stage_seconds(costs, [0.0] * (num_units + 1), starts, floor=floor)
        return starts, tuple(auto_replicas(seconds, processes))
    stages = min(processes, num_units)
    return balanced_starts(costs, stages, floor=floor), (1,) * stages
