"""The accuracy levers (issue 14) in real runs: each stays local (torchrun stages learn exactly
what the sequential trainer learns with all of them on), the choosing votes travel the pipeline
and land in the summary, and BP's deep supervision trains its heads end to end."""
import pytest
import torch

from ffpipe import config as config_mod
from ffpipe.learners import build_learners
from tests.helpers.runs import EXACT, assert_same_parameters, run_ffpipe, summary

ALL_LEVERS = ["model.name=small_cnn", "model.granularity=layer", "train.max_steps=4", "algo.head=pooled",
              "algo.head_pool=2", "algo.head_depth=1", "algo.head_schedule=decreasing", "algo.aux=similarity",
              "algo.aux_weight=0.5", "model.dropout=0.1", "data.cutout=4", "data.val_fraction=0.25",
              "algo.vote=best_range"]


@pytest.mark.slow
@pytest.mark.parametrize("aux, vote", [("similarity", "best_range"), ("reconstruction", "weighted")])
def test_with_every_lever_on_torchrun_stages_match_the_sequential_trainer_bit_for_bit(tmp_path, aux, vote):
    case = EXACT + ALL_LEVERS + [f"algo.aux={aux}", f"algo.vote={vote}"]
    run_ffpipe(case + [f"run.dir={tmp_path / 'sequential'}"])
    run_ffpipe(case + [f"run.dir={tmp_path / 'piped'}", "pipeline.boundaries=[3]"], stages=2)
    assert_same_parameters(tmp_path / "sequential", tmp_path / "piped")
    ref, piped = summary(tmp_path / "sequential"), summary(tmp_path / "piped")
    assert piped["vote"] == vote and piped["test_accuracy"] == ref["test_accuracy"]
    key = "vote_units" if vote == "best_range" else "vote_weights"
    assert piped[key] == ref[key] and len(piped["history"][-1]["val_accuracy_per_unit"]) == 7


@pytest.mark.slow
def test_with_every_lever_on_a_stopped_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """Dropout's generators travel in the checkpoints: the resumed run draws the same masks."""
    case = EXACT + ALL_LEVERS + ["train.max_steps=6", "run.checkpoint_every=1"]
    run_ffpipe(case + [f"run.dir={tmp_path / 'whole'}"])
    run_ffpipe(case + [f"run.dir={tmp_path / 'split'}", "run.stop_after_step=3"])
    run_ffpipe([], resume=tmp_path / "split")
    assert_same_parameters(tmp_path / "whole", tmp_path / "split")


def test_stage_granularity_makes_one_unit_per_resolution_and_trains(tmp_path):
    run_ffpipe(EXACT + ["model.name=resnet18", "model.granularity=stage", "train.max_steps=3",
                        f"run.dir={tmp_path}"])
    s = summary(tmp_path)
    assert len(s["test_accuracy_per_unit"]) == 4 and s["completed"]  # 16, 8, 4, 2 px of a 16 px input


def test_bp_with_deep_supervision_trains_a_head_on_every_unit_end_to_end():
    cfg = config_mod.load(None, ["model.name=small_cnn", "algo.name=bp", "algo.deep_supervision=true"])
    plain_cfg = config_mod.load(None, ["model.name=small_cnn", "algo.name=bp"])
    (net,), (plain,) = build_learners(cfg, (1, 16, 16), 10), build_learners(plain_cfg, (1, 16, 16), 10)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    out = net(x, (), y)
    out.loss.backward()
    assert len(net.heads) == len(net.body) == 4
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.heads.parameters())
    # the same network and classifier: the heads' losses come on top of the classifier's
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("heads.")})
    assert out.loss > plain(x, (), y).loss
    assert torch.equal(out.scores_BC, plain(x, ()).scores_BC)  # BP still predicts with its classifier
