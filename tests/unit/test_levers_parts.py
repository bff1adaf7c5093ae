"""The accuracy levers' parts, each on its own: cutout, the head-depth schedule, stage units,
channel dropout's own generator, and the two aux terms' values."""
from __future__ import annotations

import torch

from ffpipe import config as config_mod
from ffpipe.data.loader import cut_out
from ffpipe.ff.aux import InputReconstruction, SimilarityMatching
from ffpipe.learners import head_depth
from ffpipe.models import build_units, dry_run
from ffpipe.models.units import ChannelDropout


def test_cutout_zeroes_one_square_per_image_clipped_at_the_border():
    x = torch.ones(2, 3, 8, 8)
    out = cut_out(x, torch.tensor([[4, 4], [0, 7]]), 4)
    assert (out[0] == 0).sum() == 3 * 16 and (out[0, :, 2:6, 2:6] == 0).all()
    assert (out[1] == 0).sum() == 3 * 2 * 3  # rows -2..1 and columns 5..8: the part inside the image
    assert (out[1, :, 0:2, 5:8] == 0).all()


def test_head_depth_decreases_from_the_first_unit_to_none_on_the_last():
    algo = config_mod.load(None, ["algo.head=pooled", "algo.head_depth=3", "algo.head_schedule=decreasing"]).algo
    assert [head_depth(algo, i, 9) for i in range(9)] == [3, 3, 2, 2, 2, 1, 1, 0, 0]
    algo.head_schedule = "constant"
    assert {head_depth(algo, i, 9) for i in range(9)} == {3}


def test_stage_granularity_joins_the_blocks_of_each_resolution():
    cfg = config_mod.load(None, ["model.name=resnet18", "model.granularity=stage"]).model
    shapes = dry_run(build_units(cfg, (3, 32, 32)), (3, 32, 32))
    assert [s.out for s in shapes] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]


def test_channel_dropout_draws_from_its_own_generator_and_its_state_travels():
    a, b = ChannelDropout(0.5, seed=7), ChannelDropout(0.5, seed=7)
    x = torch.ones(4, 6, 2, 2)
    first = a(x)
    torch.manual_seed(123)  # the global generator plays no part
    assert torch.equal(first, b(x))
    assert set(first.unique().tolist()) <= {0.0, 2.0} and (first[:, :, 0, 0] == first[:, :, 1, 1]).all()
    c = ChannelDropout(0.5, seed=0)
    c.load_state_dict(a.state_dict())  # a checkpoint holds the generator's state
    assert torch.equal(c(x), a(x))
    a.eval()
    assert torch.equal(a(x), x)


def test_similarity_is_zero_for_features_that_mirror_the_labels_and_positive_otherwise():
    sim = SimilarityMatching(channels=3, num_classes=3, flat=True)
    with torch.no_grad():
        sim.conv.weight.copy_(torch.eye(3))
    y = torch.tensor([0, 1, 2, 0])
    one_hot = torch.eye(3)[y]
    assert sim(one_hot, None, y).item() < 1e-10  # centred one-hots: 1 within a class, -1/2 across
    assert sim(torch.randn(4, 3), None, y).item() > 0.01


def test_reconstruction_rebuilds_the_input_at_its_own_size():
    rec = InputReconstruction(channels=4, in_channels=2, flat=False)
    x = torch.randn(3, 2, 8, 8)
    loss = rec(torch.randn(3, 4, 4, 4, requires_grad=True), x, None)
    loss.backward()
    assert loss.item() > 0 and rec.decode.weight.grad is not None
