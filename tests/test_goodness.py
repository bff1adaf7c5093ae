import math

import torch

from ffpipe.ff.goodness import GoodnessHead, goodness, normalize_output, sff_loss, vote_probs


def test_goodness_is_mean_over_space_of_squares():
    a = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    g = goodness(a)
    assert g.shape == (2, 3)
    assert g[1, 2].item() == sum(v * v for v in (20.0, 21.0, 22.0, 23.0)) / 4


def test_head_gives_one_goodness_per_class_for_maps_and_flat_features():
    head = GoodnessHead(8, 10, kernel_size=3)
    assert head(torch.randn(4, 8, 5, 5)).shape == (4, 10)
    assert GoodnessHead(8, 10, flat=True)(torch.randn(4, 8)).shape == (4, 10)


def test_sff_loss_matches_hand_computation():
    g = torch.tensor([[1.0, 2.0, 0.5]])
    y = torch.tensor([1])
    m, tau = 0.5, 2.0
    # logsumexp over (g_c + m [c != y]) / tau, minus g_y / tau
    terms = [(1.0 + m) / tau, 2.0 / tau, (0.5 + m) / tau]
    expected = math.log(sum(math.exp(t) for t in terms)) - 2.0 / tau
    assert abs(sff_loss(g, y, m, tau).item() - expected) < 1e-6


def test_zero_margin_unit_temperature_is_cross_entropy():
    g, y = torch.randn(6, 4), torch.randint(0, 4, (6,))
    ce = torch.nn.functional.cross_entropy(g, y)
    assert torch.allclose(sff_loss(g, y, 0.0, 1.0), ce)


def test_margin_raises_the_loss_of_a_correct_but_close_prediction():
    g, y = torch.tensor([[1.0, 1.2]]), torch.tensor([1])
    assert sff_loss(g, y, 1.0, 1.0) > sff_loss(g, y, 0.0, 1.0)


def test_votes_are_probabilities_and_normalised_output_has_unit_scale():
    assert torch.allclose(vote_probs(torch.randn(5, 3), 1.0).sum(1), torch.ones(5))
    z = normalize_output(torch.randn(3, 4, 5, 5) * 30 + 7)
    assert torch.allclose(z.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std(dim=(1, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)


def test_log_goodness_is_bounded_where_square_explodes():
    a = torch.full((1, 2, 1, 1), 1e4)
    assert goodness(a).max() > 1e7
    assert goodness(a, "log_mean_square").max() < 20
