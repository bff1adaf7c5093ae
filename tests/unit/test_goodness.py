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


def _plain_layer_norm(z):
    return torch.nn.functional.layer_norm(z.float(), z.shape[1:])


def test_boundary_norm_is_the_plain_layer_norm_detached_in_the_input_format():
    z = (torch.randn(4, 6, 5, 7) * 3 + 1).requires_grad_()
    out = normalize_output(z)
    assert torch.equal(out, _plain_layer_norm(z.detach()))  # NCHW: exactly the plain formula
    assert out.grad_fn is None and not out.requires_grad
    z_cl = z.detach().contiguous(memory_format=torch.channels_last)
    out_cl = normalize_output(z_cl)
    assert out_cl.is_contiguous(memory_format=torch.channels_last) and not out_cl.is_contiguous()
    # the same elements summed in NHWC order: equal up to fp32 summation order
    torch.testing.assert_close(out_cl, _plain_layer_norm(z.detach()), rtol=0, atol=2e-6)


def test_boundary_norm_of_bf16_keeps_bf16_with_fp32_statistics_even_under_autocast():
    z = (torch.randn(2, 8, 6, 6) * 5 + 3).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = normalize_output(z.bfloat16())
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    # within bf16 rounding of the fp32 norm of the same bf16 values
    torch.testing.assert_close(out.float(), _plain_layer_norm(z.bfloat16()).bfloat16().float(),
                               rtol=0, atol=0.02)


def test_mean_square_is_bit_identical_to_the_plain_formula_in_fp32_forward_and_backward():
    a = torch.randn(3, 5, 4, 6, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    g, g_plain = goodness(a), b.float().pow(2).mean(dim=(2, 3))
    assert torch.equal(g, g_plain)
    w = torch.randn(3, 5)
    (g * w).sum().backward()
    (g_plain * w).sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_mean_square_of_bf16_sums_in_fp32_and_returns_a_bf16_gradient():
    a32 = torch.randn(2, 3, 8, 8) * 4
    a = a32.bfloat16().requires_grad_()
    g = goodness(a)
    assert g.dtype == torch.float32
    torch.testing.assert_close(g, a.detach().float().pow(2).mean(dim=(2, 3)), rtol=1e-5, atol=0)
    g.sum().backward()
    assert a.grad.dtype == torch.bfloat16
    torch.testing.assert_close(a.grad.float(), 2 * a.detach().float() / 64, rtol=1e-2, atol=0)


def test_sff_loss_equals_the_one_hot_formula_bit_for_bit():
    g, y = torch.randn(16, 10) * 3, torch.randint(0, 10, (16,))
    logits = g + 0.7 * (1.0 - torch.nn.functional.one_hot(y, 10).to(g.dtype))
    assert torch.equal(sff_loss(g, y, 0.7, 1.3), torch.nn.functional.cross_entropy(logits / 1.3, y))


def test_the_pooled_head_projects_a_small_map_and_still_learns():
    from ffpipe.ff.goodness import GoodnessHead

    torch.manual_seed(0)
    full, pooled = GoodnessHead(16, 1000), GoodnessHead(16, 1000, pool=4)
    pooled.load_state_dict(full.state_dict())
    z = torch.randn(2, 16, 56, 56, requires_grad=True)
    seen = []
    pooled.proj.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    g = pooled(z)
    assert g.shape == (2, 1000) and seen == [(2, 16, 4, 4)]
    g.sum().backward()
    assert z.grad is not None and pooled.proj.weight.grad.abs().sum() > 0
    # a map already at most 4 x 4 is not pooled: the same goodness as the full head
    small = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(pooled(small), full(small))


def test_pooling_too_large_for_one_cuda_kernel_runs_in_slices_of_the_batch_with_the_same_result(monkeypatch):
    from ffpipe.ff import goodness as goodness_mod

    z = torch.randn(7, 3, 9, 10, requires_grad=True)
    whole = torch.nn.functional.adaptive_avg_pool2d(z, (4, 4))
    monkeypatch.setattr(goodness_mod, "_POOL_ELEMENTS", 2 * z[0].numel())  # slices of 2 samples
    sliced = goodness_mod.pool_to(z, (4, 4))
    assert torch.equal(sliced, whole)
    grads = [torch.autograd.grad(out.square().sum(), z)[0] for out in (sliced, whole)]
    assert torch.equal(*grads)


def test_pooling_over_windows_that_divide_the_map_is_adaptive_pooling_in_either_format():
    from ffpipe.ff.goodness import pool_to

    z = torch.randn(3, 5, 12, 8, requires_grad=True)
    for layout in (torch.contiguous_format, torch.channels_last):
        zl = z.contiguous(memory_format=layout)
        pooled = pool_to(zl, (4, 2))
        torch.testing.assert_close(pooled, torch.nn.functional.adaptive_avg_pool2d(z, (4, 2)), rtol=0, atol=1e-6)
        assert pooled.is_contiguous(memory_format=layout)
        grad, = torch.autograd.grad(pooled.square().sum(), z)
        plain, = torch.autograd.grad(torch.nn.functional.adaptive_avg_pool2d(z, (4, 2)).square().sum(), z)
        torch.testing.assert_close(grad, plain, rtol=0, atol=1e-6)


def test_row_statistics_combined_from_chunks_are_those_of_the_whole_row():
    from ffpipe.kernels import row_norm

    row_len = 2 * row_norm.BLOCK * row_norm.CHUNK_BLOCKS + 1000  # three chunks, the last short
    rows = torch.randn(4, row_len, dtype=torch.float64) * 5 + 3
    count_K = row_norm.chunk_counts(row_len, 3, rows.device).double()
    parts = rows.split(count_K.int().tolist(), dim=1)
    mean_RK = torch.stack([p.mean(1) for p in parts], 1)
    m2_RK = torch.stack([(p - p.mean(1, keepdim=True)).square().sum(1) for p in parts], 1)
    mean_R, rstd_R = row_norm.combine(mean_RK, m2_RK, count_K, row_len)
    torch.testing.assert_close(mean_R, rows.mean(1))
    torch.testing.assert_close(rstd_R, torch.rsqrt(rows.var(1, unbiased=False) + row_norm.EPS))
