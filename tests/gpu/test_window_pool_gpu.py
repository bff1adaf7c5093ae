"""The pooled head's one-read forward (kernels/window_pool.py) compiled on a GPU: the window means
and the boundary norm's statistics against the plain path, and a bf16 ResNet-50 unit's step."""
import pytest
import torch

from ffpipe.config import AlgoConfig
from ffpipe.ff import goodness
from ffpipe.ff.goodness import GoodnessHead
from ffpipe.ff.unit import LocalUnit
from ffpipe.kernels import window_pool
from ffpipe.kernels.relu import LeanReLU
from ffpipe.models.resnet import resnet_units

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize("shape, out", [((64, 256, 56, 56), (4, 4)), ((96, 64, 32, 32), (4, 4)),
                                        ((8, 2048, 8, 8), (4, 4)), ((5, 3, 12, 20), (4, 2)),
                                        ((64, 128, 16, 16), (4, 4)), ((64, 256, 8, 8), (4, 4)),
                                        ((64, 1024, 14, 14), (4, 4)), ((64, 2048, 7, 7), (4, 4))])
def test_window_terms_give_the_window_means_and_each_samples_statistics(shape, out):
    z = (torch.randn(shape, device=CUDA) * 3 + 1).bfloat16().contiguous(memory_format=torch.channels_last)
    pooled, (mean_R, rstd_R) = window_pool.fused_forward(z, *out)
    exact = torch.nn.functional.adaptive_avg_pool2d(z.double(), out)
    assert pooled.dtype == torch.bfloat16 and pooled.is_contiguous(memory_format=torch.channels_last)
    # one bf16 rounding of each mean (2^-8 of it) after an fp32 sum; an absolute 2^-7 was too
    # tight on an H200: means of 2 x 2 windows reach 4 and more, where half an ulp is 2^-6
    assert ((pooled.double() - exact).abs() <= 2**-8 * exact.abs() + 1e-6).all()
    flat = z.double().reshape(shape[0], -1)
    torch.testing.assert_close(mean_R.double(), flat.mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rstd_R.double(), torch.rsqrt(flat.var(1, unbiased=False) + 1e-5), atol=1e-5, rtol=1e-5)


def _masked_grad(fused: bool, shape, monkeypatch, dtype=torch.bfloat16):
    """The gradient reaching y through LeanReLU and the pooled head's pooling. y and the pooled
    map's gradient hold bf16 values whatever `dtype`, so an fp32 run is the exact reference."""
    monkeypatch.setattr(window_pool, "fuses", lambda z: fused)
    torch.manual_seed(0)
    y = torch.randn(shape, device=CUDA).bfloat16().to(dtype).contiguous(memory_format=torch.channels_last)
    y.requires_grad_(True)
    pooled, stats = goodness.pool_and_stats(LeanReLU()(y * 1), 4)
    assert (stats is not None) == fused
    (pooled.float() * torch.randn(pooled.shape, device=CUDA).bfloat16().float()).sum().backward()
    return y.grad


def test_the_masked_gradient_is_the_plain_paths_bit_for_bit_with_equal_windows(monkeypatch):
    """After a LeanReLU: the kernel's spread and mask against autograd's mean backward and the
    ReLU's own mask, bf16, a ResNet-50 first-stage map."""
    fused = _masked_grad(True, (64, 256, 56, 56), monkeypatch)
    assert fused.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(fused, _masked_grad(False, (64, 256, 56, 56), monkeypatch))


@pytest.mark.parametrize("shape", [(64, 1024, 14, 14), (64, 2048, 7, 7)])
def test_the_masked_gradient_of_overlapping_windows_is_the_fp32_one_rounded_once(monkeypatch, shape):
    """A pixel of overlapping windows sums two to four shares. The kernel sums them in fp32 and
    rounds once, so it is within half a bf16 ulp of the fp32 gradient; torch's bf16 adaptive
    pooling was up to 2 ulps from it (H200, 2026-12-05), so it is not the reference here."""
    fused = _masked_grad(True, shape, monkeypatch).float()
    exact = _masked_grad(False, shape, monkeypatch, torch.float32)
    assert ((fused - exact).abs() <= 2**-8 * exact.abs() + 1e-7).all()
    assert (fused != 0).sum() > 0.4 * fused.numel()  # about half the pixels pass the ReLU


@pytest.mark.parametrize("shape", [(64, 256, 56, 56), (64, 1024, 14, 14), (64, 2048, 7, 7), (256, 256, 8, 8)])
def test_the_backward_writes_the_boundary_norm_the_norms_own_kernel_writes(shape):
    """The pooling's backward writes the norm the unit passes on over z, in its pass over z: bit
    for bit what row_norm's kernel writes from the same statistics, in no memory of its own."""
    torch.manual_seed(0)
    y = torch.randn(shape, device=CUDA).bfloat16().contiguous(memory_format=torch.channels_last)
    z = LeanReLU()(y.requires_grad_(True) * 1)
    pooled, stats = goodness.pool_and_stats(z, 4)
    pending = goodness.pending_norm(z, pooled, stats, sole_reader=True)
    want = goodness.normalize_output(z.detach(), stats)
    (pooled.float() * torch.randn(pooled.shape, device=CUDA)).sum().backward()
    assert pending.z is None and pending.normed.data_ptr() == z.data_ptr()
    assert torch.equal(goodness.boundary_norm(pending), want)


def _resnet50_unit_step(fused: bool, monkeypatch):
    monkeypatch.setattr(window_pool, "fuses", lambda z: fused and z.is_cuda)
    torch.manual_seed(0)
    body = resnet_units("resnet50", (3, 224, 224), "block")[1]  # 64 -> 256 channels at 56 x 56
    unit = LocalUnit(1, body, GoodnessHead(256, 1000, pool=4), AlgoConfig()).to(CUDA)
    unit = unit.to(memory_format=torch.channels_last)
    x = torch.randn(32, 64, 56, 56, device=CUDA).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = unit(x, (), torch.randint(0, 1000, (32,), device=CUDA))
    out.loss.backward()
    return out.loss.item(), out.x.float(), [p.grad.float() for p in unit.parameters()]


def test_a_bf16_resnet50_unit_learns_as_on_the_plain_path(monkeypatch):
    loss, x_next, grads = _resnet50_unit_step(True, monkeypatch)
    loss_plain, x_plain, grads_plain = _resnet50_unit_step(False, monkeypatch)
    assert abs(loss - loss_plain) <= 1e-3 * abs(loss_plain)
    assert (x_next - x_plain).abs().max() <= 0.05  # bf16 outputs of values ~ |4|
    for g, g_plain in zip(grads, grads_plain):
        assert (g - g_plain).norm() <= 0.02 * g_plain.norm() + 1e-6
    assert goodness.triton_runs(x_next)
