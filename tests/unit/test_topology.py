"""Stage replicas: which process holds which rows, and messages cut and joined by rows."""
import pytest
import torch

from ffpipe import config as config_mod
from ffpipe.errors import ConfigError, PipelineError
from ffpipe.pipeline.messages import Message, Phase, control
from ffpipe.pipeline.replicas.shards import ShardedSource, join, split
from ffpipe.pipeline.replicas.choice import auto_replicas
from ffpipe.pipeline.replicas.topology import Topology, shard_rows


def test_ranks_go_stage_by_stage_and_shards_cover_the_batch_in_order():
    t = Topology.of([2, 1, 3])
    assert t.world == 6 and t.stage_ranks(2) == [3, 4, 5]
    assert [(p.stage, p.replica) for p in map(t.place, range(6))] == [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1), (2, 2)]
    assert [shard_rows(10, 3, r) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(ValueError):
        t.place(6)


def test_each_replica_talks_only_to_the_replicas_whose_rows_meet_its_own():
    t = Topology.of([2, 2, 3, 1])
    assert [t.receivers(t.place(r)) for r in (0, 1)] == [[2], [3]]          # 2 -> 2: one each
    assert [t.receivers(t.place(r)) for r in (2, 3)] == [[4, 5], [5, 6]]    # 2 -> 3: the middle one hears both
    assert [t.senders(t.place(r)) for r in (4, 5, 6)] == [[2], [2, 3], [3]]
    assert t.senders(t.place(7)) == [4, 5, 6] and t.receivers(t.place(7)) == []


def _batch(rows: int, eval_counts: bool = False) -> Message:
    x = torch.arange(rows * 2 * 3 * 3, dtype=torch.float32).reshape(rows, 2, 3, 3)
    msg = Message(Phase.EVAL if eval_counts else Phase.TRAIN, 0, 7, x=x, y=torch.arange(rows),
                  skips=(x * 2,))
    if eval_counts:
        msg.votes, msg.unit_correct = torch.rand(rows, 4), torch.tensor([3, 5])
    return msg


@pytest.mark.parametrize("senders, receivers, rows", [(2, 3, 10), (3, 2, 17), (1, 4, 9), (3, 3, 2)])
def test_shards_cut_for_any_replica_counts_join_back_to_the_batch(senders, receivers, rows):
    whole = _batch(rows, eval_counts=True)
    t = Topology.of([senders, receivers])
    shards = [ShardedSource(iter_source(whole), senders, r).recv() for r in range(senders)]
    inboxes = {rank: [] for rank in t.stage_ranks(1)}
    for r, shard in enumerate(shards):
        targets = t.receivers(t.place(r))
        for rank, piece in zip(targets, split(shard, receivers, [t.place(q).replica for q in targets])):
            inboxes[rank].append(piece)
    received = [join(inboxes[rank]) for rank in t.stage_ranks(1)]
    for q, got in enumerate(received):  # each receiver has exactly its rows
        lo, hi = shard_rows(rows, receivers, q)
        assert torch.equal(got.y, whole.y[lo:hi]) and torch.equal(got.skips[0], whole.skips[0][lo:hi])
        assert (got.offset, got.total) == (lo, rows)
    again = join(received)
    assert torch.equal(again.x, whole.x) and torch.equal(again.votes, whole.votes)
    # the counts of each sender are counted once: senders * the shard-0 counts of the source
    assert again.unit_correct.tolist() == [3 * senders, 5 * senders]


def iter_source(msg):
    class Source:
        def recv(self):
            return msg

        def close(self):
            pass
    return Source()


def test_pieces_of_different_batches_are_refused():
    a, b = _batch(4), _batch(4).replace(step=8)
    with pytest.raises(PipelineError, match="replicas out of step"):
        join([a, b])
    end = control(Phase.END, 0, 9)
    assert join([end, end]) is end


def test_auto_replicas_go_to_the_slowest_stage_per_replica():
    assert auto_replicas([3.0, 1.0, 1.0, 1.0], 8) == [4, 2, 1, 1]
    assert auto_replicas([1.0, 1.0], 2) == [1, 1]


def test_replicas_in_the_config_are_checked():
    cfg = config_mod.load(None, ["pipeline.backend=torchrun", "pipeline.replicas=[2, 1, 1]"])
    assert cfg.pipeline.stages == 3  # stages left at 1: one per count
    assert config_mod.load(None, ["pipeline.backend=ray", "pipeline.replicas=auto"]).pipeline.replicas == "auto"
    bad = {"pipeline.replicas=[2, 0]": "counts >= 1", "pipeline.replicas=fast": "type list",
           "pipeline.replicas=[2]": "several processes"}
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            config_mod.load(None, [override] + (["pipeline.backend=torchrun"] if "0" in override else []))
    with pytest.raises(ConfigError, match="transport = 'p2p'"):
        config_mod.load(None, ["pipeline.backend=ray", "pipeline.transport=ray", "pipeline.replicas=[2]"])
    with pytest.raises(ConfigError, match="one count per stage"):
        config_mod.load(None, ["pipeline.backend=torchrun", "pipeline.stages=3", "pipeline.replicas=[2, 2]"])
    with pytest.raises(ConfigError, match="batch_size"):
        config_mod.load(None, ["pipeline.backend=torchrun", "pipeline.replicas=[4]", "train.batch_size=3"])


def test_channel_pairs_are_every_pair_that_opens_a_channel():
    assert Topology.of([1, 1, 1, 1]).channel_pairs() == [(0, 1), (1, 2), (2, 3)]
    # 3 replicas feeding 2: replica 1 sends to both; the last stage's replica 1 sends its shards to 0
    assert Topology.of([3, 2]).channel_pairs() == [(0, 3), (1, 3), (1, 4), (2, 4), (3, 4)]
    t = Topology.of([2, 1, 2])
    for rank in range(t.world):
        place = t.place(rank)
        for peer in t.senders(place) + t.receivers(place):
            assert (min(rank, peer), max(rank, peer)) in t.channel_pairs()


def test_a_layout_shrinks_to_the_processes_left_replicas_first():
    from ffpipe.pipeline.replicas.choice import fit_layout

    assert fit_layout([0, 4], (2, 2), 8, 4) == ([0, 4], (2, 2))  # it fits: unchanged
    assert fit_layout([0, 4], (2, 2), 8, 3) == ([0, 4], (2, 1))  # one replica less, split kept
    assert fit_layout([0, 4], (1, 1), 8, 1) == ([0], (1,))  # one stage holds every unit
    assert fit_layout([0, 2, 5], (1, 1, 1), 8, 2, costs=[1, 1, 1, 1, 1, 1, 1, 5]) == ([0, 6], (1, 1))
    assert fit_layout([0, 2, 5], (1, 1, 1), 8, 2) == ([0, 4], (1, 1))
