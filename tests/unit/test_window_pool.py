"""LeanReLU's side of the pooled head's masked gradient (kernels/relu.py `premasked`; the kernels
themselves: tests/helpers/interpreted.py under Triton's interpreter, tests/gpu compiled): a
gradient that arrives already masked, unchanged, is passed on; any other is masked."""
import torch
from torch.autograd import Function

from ffpipe.ff import goodness
from ffpipe.kernels import window_pool
from ffpipe.kernels.relu import LeanReLU, lean_relu_node
from tests.helpers.interpreted import Ops


class MaskingReader(Function):
    """A reader of a ReLU's output whose backward masks its gradient itself, as the window pool's
    kernel does, and says so to the ReLU."""

    @staticmethod
    def forward(ctx, z, relu):
        ctx.relu = relu
        ctx.save_for_backward(z)
        return z * 2

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        out = torch.where(z > 0, grad * 2, 0)
        ctx.relu.premasked = (out, out._version)
        return out, None


def _grad(extra_reader: bool):
    torch.manual_seed(0)
    y = torch.randn(4, 6, requires_grad=True)
    z = LeanReLU()(y * 1)
    relu = lean_relu_node(z)
    assert relu is not None and lean_relu_node(y * 1) is None
    loss = (MaskingReader.apply(z, relu) * torch.randn(4, 6)).sum()
    if extra_reader:  # a second reader (an aux term): autograd sums the gradients, the ReLU masks
        loss = loss + z.sum()
    with Ops() as ops:
        loss.backward()
    return y.grad, ops.names


def test_a_premasked_gradient_passes_the_relu_and_a_summed_one_is_masked():
    grad, ops = _grad(extra_reader=False)
    assert "threshold_backward" not in ops
    torch.manual_seed(0)
    y = torch.randn(4, 6)
    want = torch.where(y > 0, 2 * torch.randn(4, 6), 0)
    assert torch.equal(grad, want)
    grad, ops = _grad(extra_reader=True)
    assert ops.count("threshold_backward") == 1
    assert torch.equal(grad, want + (y > 0).float())


def test_on_the_cpu_the_plain_window_mean_runs_and_gives_no_statistics():
    z = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert not window_pool.fuses(z)
    pooled, stats = goodness.pool_and_stats(z, 4)
    assert stats is None and torch.equal(pooled, goodness.window_mean(z, 4, 4))
    pooled.sum().backward()
    assert torch.equal(z.grad, torch.full_like(z, 1 / 4))


def test_the_kernels_take_only_samples_of_more_than_plain_up_to_elements(monkeypatch):
    """Where Triton runs, a channels_last map fuses when each sample has more than PLAIN_UP_TO
    elements (ResNet18's 32 x 32, 16 x 16 and 8 x 8 maps at 32 px), not smaller ones, nor NCHW."""
    monkeypatch.setattr(window_pool, "triton_runs", lambda t: True)
    nhwc = torch.channels_last
    big = torch.empty(1, 256, 8, 8).contiguous(memory_format=nhwc)  # 16,384 elements a sample
    small = torch.empty(1, 128, 8, 8).contiguous(memory_format=nhwc)  # 8,192
    assert window_pool.fuses(big) and not window_pool.fuses(small)
    assert not window_pool.fuses(big.contiguous())
