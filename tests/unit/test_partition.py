from itertools import combinations

import pytest
import torch

from ffpipe.errors import ConfigError
from ffpipe.pipeline.partition import balanced_starts, stage_ranges, stage_seconds, stage_starts
from ffpipe.pipeline.replicas.choice import balanced_with_replicas


def test_balanced_split_minimises_the_slowest_stage():
    costs = [1, 1, 1, 1, 8, 1, 1, 1]
    starts = balanced_starts(costs, 3)
    loads = [sum(costs[r.start:r.stop]) for r in stage_ranges(starts, len(costs))]
    assert max(loads) == 8 and starts[0] == 0
    assert starts == [0, 4, 5]


def test_equal_costs_split_evenly_and_explicit_boundaries_win():
    assert stage_starts(9, 3) == [0, 3, 6]
    assert stage_starts(9, 3, boundaries=[2, 7]) == [0, 2, 7]
    assert [len(r) for r in stage_ranges([0, 2, 7], 9)] == [2, 5, 2]


def test_one_stage_per_unit_and_too_many_stages():
    assert balanced_starts([3, 1, 2], 3) == [0, 1, 2]
    with pytest.raises(ConfigError, match="pipeline.stages = 4 but the model has only 3 units"):
        stage_starts(3, 4)
    with pytest.raises(ConfigError, match="each below 5"):
        stage_starts(5, 2, boundaries=[5])


def test_a_cut_that_moves_a_large_tensor_costs_both_stages_beside_it():
    from ffpipe.pipeline.partition import balanced_starts, stage_seconds

    costs = [1.0, 1.0, 1.0, 1.0]
    assert balanced_starts(costs, 2) == [0, 2]
    # cutting before unit 2 moves a big tensor; before unit 1 or 3 a small one
    cuts = [0.0, 0.1, 5.0, 0.1, 0.0]
    assert balanced_starts(costs, 2, cuts) == [0, 1]
    assert stage_seconds(costs, cuts, [0, 1]) == [1.1, 3.1]
    assert stage_seconds(costs, cuts, [0, 1], replicas=(1, 2)) == [1.1, 1.55]


def test_a_replicated_stage_takes_more_units():
    costs = [4.0, 3.0, 3.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0]
    assert balanced_starts(costs, 3) == [0, 2, 4]  # 7 / 5 / 7
    starts = balanced_starts(costs, 3, replicas=[2, 1, 1])
    assert starts == [0, 3, 5]  # 10 over two copies / 4 / 5
    assert max(stage_seconds(costs, [0.0] * 10, starts, (2, 1, 1))) == 5.0


def test_auto_replicas_and_the_split_are_balanced_together():
    costs, cuts = [4.0, 3.0, 3.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0], [0.0] * 10
    starts, replicas = balanced_with_replicas(costs, cuts, 3, 4)
    assert sum(replicas) == 4
    # the split balanced first (7 / 5 / 7) with one stage doubled leaves 7; balanced together: 5
    assert max(stage_seconds(costs, cuts, starts, tuple(replicas))) == 5.0
    # exhaustive check: no split and replica counts on 4 processes do better
    best = min(max(stage_seconds(costs, cuts, [0, a, b], r)) for a, b in combinations(range(1, 9), 2)
               for r in [(2, 1, 1), (1, 2, 1), (1, 1, 2)])
    assert best == 5.0


def test_a_loader_decoding_beside_the_step_is_a_floor_under_stage_0_not_more_work():
    # six equal units, a loader of 4 units' time: as serial work it would leave stage 0 one unit
    # (5 and 5); decoding on CPU threads beside a GPU's step, stage 0 takes the longer of its units
    # and its loader, so it holds two units and both stages take 4
    assert balanced_starts([5.0, 1, 1, 1, 1, 1], 2) == [0, 1]
    assert balanced_starts([1.0] * 6, 2, floor=4.0) == [0, 2]
    assert stage_seconds([1.0] * 6, [0.0] * 7, [0, 2], floor=4.0) == [4.0, 4.0]
    # each replica of stage 0 decodes only its rows: the floor is shared as the units are
    assert stage_seconds([1.0] * 6, [0.0] * 7, [0, 2], replicas=(2, 1), floor=4.0) == [2.0, 4.0]
    starts, replicas = balanced_with_replicas([1.0] * 6, [0.0] * 7, 2, 3, floor=4.0)
    assert replicas[0] == 2  # the floor makes stage 0 the slowest: it gets the extra process


def test_only_cpu_decoding_for_a_gpu_counts_as_beside_the_step():
    from ffpipe.data.stream.loader import decodes_beside_step
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert decodes_beside_step(cuda, "pil") and decodes_beside_step(cuda, "nvimgcodec-cpu")
    # nvJPEG waits for the GPU's queue; on a CPU the step and the decoding share the cores
    assert not decodes_beside_step(cuda, "torchcodec") and not decodes_beside_step(cuda, "nvimgcodec-hw")
    assert not decodes_beside_step(cpu, "pil")
