"""algo.vote: how the last stage turns each unit's votes into the network's prediction, the
ranges and weights chosen on the validation batches of the same evaluation."""
from __future__ import annotations

import pytest
import torch

from ffpipe import config as config_mod
from ffpipe.errors import ConfigError
from ffpipe.pipeline.messages import Message, Phase, control
from ffpipe.pipeline.sink import EvalSink, range_correct, samme_weights

# 3 units, 3 classes, 4 images of classes 0, 1, 2, 2. Unit 0 is right on all four, unit 1 on
# none, unit 2 on the last two only (one-hot votes).
Y = torch.tensor([0, 1, 2, 2])
VOTES = torch.stack([torch.eye(3)[Y], torch.eye(3)[torch.tensor([1, 2, 0, 0])],
                     torch.eye(3)[torch.tensor([1, 0, 2, 2])]], dim=1)  # B x U x C


def _evaluate(vote: str, val_votes=VOTES, test_votes=VOTES) -> dict:
    results = []
    sink = EvalSink(num_units=3, on_result=results.append, vote=vote)
    for phase, votes in ((Phase.VAL, val_votes), (Phase.EVAL, test_votes)):
        correct = (votes.argmax(dim=2) == Y[:, None]).sum(dim=0)
        sink.send(Message(phase, 0, 0, y=Y, votes=votes, unit_correct=correct))
    sink.send(control(Phase.EVAL_END, 0, 5))
    return results[0]


def test_every_contiguous_range_of_units_is_scored_by_its_mean_vote():
    got = range_correct(VOTES.float(), Y)
    for i in range(3):
        for j in range(3):
            want = (VOTES[:, i:j + 1].float().sum(dim=1).argmax(dim=1) == Y).sum() if j >= i else 0
            assert got[i, j] == want


def test_best_range_is_chosen_on_validation_and_scored_on_test():
    r = _evaluate("best_range")
    assert r["vote_units"] == [0, 0] and r["val_accuracy"] == 1.0 and r["test_accuracy"] == 1.0
    # on test, unit 0 turns wrong: the range chosen on validation keeps it (no peeking at test)
    flipped = VOTES.clone()
    flipped[:, 0] = torch.eye(3)[torch.tensor([1, 0, 0, 1])]
    r = _evaluate("best_range", test_votes=flipped)
    assert r["vote_units"] == [0, 0] and r["test_accuracy"] == 0.0
    assert r["val_accuracy_per_unit"] == [1.0, 0.0, 0.5] and r["test_accuracy_per_unit"] == [0.0, 0.0, 0.5]


def test_weighted_vote_uses_samme_weights_from_validation():
    r = _evaluate("weighted")
    assert r["vote_weights"] == [round(w, 4) for w in samme_weights([1.0, 0.0, 0.5], 3)]
    assert r["vote_weights"][1] == 0.0  # a unit never right on validation has no say
    assert r["test_accuracy"] == 1.0 and r["test_accuracy_mean"] == 0.5


def test_last_and_mean_votes():
    assert _evaluate("last")["test_accuracy"] == 0.5
    r = _evaluate("mean")
    assert r["test_accuracy"] == r["test_accuracy_mean"] == 0.5  # ties go to the lowest class


def test_votes_that_choose_need_a_validation_split():
    with pytest.raises(ConfigError, match="set data.val_fraction"):
        config_mod.load(None, ["algo.vote=best_range"])
