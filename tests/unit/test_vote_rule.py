"""The vote a trained network applies (ffpipe/inference/votes.py) against the evaluation sink's:
on random near-tied votes every rule picks the same classes as the sink counts, and the
early-exit form restricts each rule to the units run so far."""
from __future__ import annotations

import pytest
import torch

from ffpipe.inference.votes import VoteRule
from ffpipe.pipeline.messages import Message, Phase, control
from ffpipe.pipeline.sink import EvalSink

B, U, C = 512, 5, 4


def _votes(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores B x U x C, softmax votes, labels): scores quantised so that many sums nearly tie."""
    gen = torch.Generator().manual_seed(seed)
    scores = (torch.rand((B, U, C), generator=gen) * 4).round() / 4
    return scores, torch.softmax(scores, dim=2), torch.randint(0, C, (B,), generator=gen)


def _sink_result(vote: str, apart: bool) -> dict:
    results = []
    sink = EvalSink(num_units=U, on_result=results.append, vote=vote)
    for phase, seed in ((Phase.VAL, 1), (Phase.EVAL, 2)):
        scores, votes, y = _votes(seed)
        correct = (scores.argmax(dim=2) == y[:, None]).sum(dim=0)
        if not apart:  # the stage adds the units' votes one by one
            summed = torch.zeros(B, C)
            for u in range(U):
                summed += votes[:, u]
            votes = summed
        sink.send(Message(phase, 0, 0, y=y, votes=votes, unit_correct=correct))
    sink.send(control(Phase.EVAL_END, 0, 1))
    return results[0]


@pytest.mark.parametrize("vote, apart", [("mean", False), ("mean", True), ("last", False),
                                         ("best_range", True), ("weighted", True)])
def test_the_rule_counts_what_the_sink_counts(vote, apart):
    result = _sink_result(vote, apart)
    rule = VoteRule.of_run(vote, U, C, apart, result)
    scores, votes, y = _votes(2)
    decision, probs = rule.decide(scores, votes)
    assert int((decision.argmax(dim=1) == y).sum()) / B == result["test_accuracy"]
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(B))
    if vote == "best_range":
        assert rule.units == tuple(result["vote_units"]) and rule.last_unit == rule.units[1]


def test_without_a_validation_split_the_chosen_votes_fall_back_to_the_mean():
    assert VoteRule.of_run("best_range", U, C, True, {"test_accuracy": 0.5}).name == "mean"
    assert VoteRule.of_run("weighted", U, C, True, None).name == "mean"
    assert VoteRule.of_run("best_range", 1, C, False, {"vote_units": [0, 0]}).name == "mean"  # BP


def test_early_exit_votes_use_only_the_units_run():
    _, votes, _ = _votes(3)
    first_two = votes[:, :2]
    torch.testing.assert_close(VoteRule("mean", U).upto(first_two), first_two.mean(dim=1))
    torch.testing.assert_close(VoteRule("last", U).upto(first_two), first_two[:, 1])
    ranged = VoteRule("best_range", U, True, units=(1, 3))
    torch.testing.assert_close(ranged.upto(votes[:, :1]), votes[:, 0])  # before the range: unit 0 alone
    torch.testing.assert_close(ranged.upto(votes[:, :3]), votes[:, 1:3].mean(dim=1))
    weighted = VoteRule("weighted", U, True, weights=(0.0, 2.0, 1.0, 0.0, 0.0))
    torch.testing.assert_close(weighted.upto(votes[:, :1]), votes[:, 0])  # no weight yet
    torch.testing.assert_close(weighted.upto(votes[:, :3]), (2 * votes[:, 1] + votes[:, 2]) / 3)
