"""The GPU path of the pooled head and the boundary norm run by Triton's interpreter on the CPU.

Run as `TRITON_INTERPRET=1 python -m tests.helpers.interpreted` (Triton reads the variable when a
kernel is defined, so it needs a process of its own; tests/unit/test_kernels_interpreted.py does
that). Each check compares the kernels' results with the plain path's and raises if they differ;
the kernels' indexing, masks and statistics are what it tests, not their speed.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ffpipe.config import AlgoConfig
from ffpipe.data.stream import resize
from ffpipe.ff import goodness
from ffpipe.ff.goodness import GoodnessHead
from ffpipe.ff.unit import LocalUnit
from ffpipe.kernels import crop_resize, goodness_loss, row_norm, window_pool, window_whole
from ffpipe.kernels.relu import LeanReLU
from ffpipe.models.resnet import small_cnn_units


class Ops(TorchDispatchMode):
    """The names of the aten operations run under it."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def gpu_path(on: bool) -> None:
    """Whether ffpipe takes its Triton path for CPU tensors (as it does for CUDA ones)."""
    runs = (lambda t: True) if on else (lambda t: False)
    window_pool.triton_runs = goodness.triton_runs = goodness_loss.triton_runs = row_norm.triton_runs = runs
    window_pool.PLAIN_UP_TO = 0  # these maps are small; the size gate is a speed choice, tested apart


# (map, pooled size, dtype): equal windows, and adaptive pooling's overlapping ones (ResNet-152's
# 14 x 14 maps and the 7 x 7 ones after them, pooled to 4 x 4)
SHAPES = [((3, 20, 16, 12), (4, 4), torch.float32), ((2, 7, 8, 8), (4, 2), torch.bfloat16),
          ((2, 300, 8, 8), (2, 2), torch.float32), ((2, 20, 14, 14), (4, 4), torch.float32),
          ((2, 6, 7, 7), (4, 4), torch.bfloat16), ((1, 5, 14, 10), (4, 3), torch.float32)]


def check_window_terms() -> None:
    """Both forward kernels: a window walked in tiles, and whole windows in one (on most shapes)."""
    whole_tile = window_whole.TILE
    try:
        for tile in (0, whole_tile):
            window_whole.TILE = tile
            _check_window_terms()
    finally:
        window_whole.TILE = whole_tile


def _check_window_terms() -> None:
    torch.manual_seed(0)
    for shape, out, dtype in SHAPES:
        z = (torch.randn(shape) * 3 + 1).to(dtype).contiguous(memory_format=torch.channels_last)
        pooled, (mean_R, rstd_R) = window_pool.fused_forward(z, *out)
        want = torch.nn.functional.adaptive_avg_pool2d(z.float(), out)
        assert pooled.dtype == dtype and pooled.shape == want.shape, (pooled.shape, want.shape)
        assert pooled.is_contiguous(memory_format=torch.channels_last)
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(pooled.float(), want.float(), atol=tol, rtol=tol)
        flat = z.float().reshape(shape[0], -1)
        torch.testing.assert_close(mean_R, flat.mean(1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rstd_R, torch.rsqrt(flat.var(1, unbiased=False) + row_norm.EPS), rtol=1e-5, atol=1e-5)
    # a mean far from zero against a small spread: the statistics must not cancel
    z = (torch.randn(2, 24, 14, 14, dtype=torch.float64) * 0.05 + 300).float().contiguous(memory_format=torch.channels_last)
    _, (mean_R, rstd_R) = window_pool.fused_forward(z, 4, 4)
    flat = z.double().reshape(2, -1)
    torch.testing.assert_close(mean_R.double(), flat.mean(1), rtol=1e-6, atol=0)
    torch.testing.assert_close(rstd_R.double(), torch.rsqrt(flat.var(1, unbiased=False) + row_norm.EPS), rtol=1e-3, atol=0)


def pooled_grad(on: bool, dtype: torch.dtype, after_relu: bool, extra_reader: bool = False, shape=(3, 20, 16, 12)):
    """y's gradient through (a LeanReLU and) the pooling to 4 x 4, on the kernels' path or the plain
    one; and whether any ReLU mask ran in torch."""
    gpu_path(on)
    torch.manual_seed(0)
    y = (torch.randn(shape) * 2).to(dtype).contiguous(memory_format=torch.channels_last)
    y = y.requires_grad_(True)
    z = LeanReLU()(y * 1) if after_relu else y * 1
    pooled, stats = goodness.pool_and_stats(z, 4)
    assert (stats is not None) == on
    loss = (pooled.float() * torch.randn(pooled.shape)).sum()
    if extra_reader:
        loss = loss + z.float().square().mean()
    with Ops() as ops:
        loss.backward()
    return y.grad, "threshold_backward" in ops.names


def check_spread() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        for after_relu, extra in ((True, False), (True, True), (False, False)):
            grad, torch_masked = pooled_grad(True, dtype, after_relu, extra)
            want, _ = pooled_grad(False, dtype, after_relu, extra)
            assert torch.equal(grad, want), (dtype, after_relu, extra)
            # after a ReLU alone, the kernel's mask is the only one; summed with another reader's
            # gradient, the ReLU masks the sum
            assert torch_masked == extra, (dtype, after_relu, extra)
    for shape in ((2, 20, 14, 14), (2, 6, 7, 7), (1, 5, 14, 10)):  # overlapping windows: up to fp32 rounding
        for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
            grad, torch_masked = pooled_grad(True, dtype, True, shape=shape)
            want, _ = pooled_grad(False, dtype, True, shape=shape)
            torch.testing.assert_close(grad.float(), want.float(), atol=tol, rtol=tol)
            assert not torch_masked and grad.is_contiguous(memory_format=torch.channels_last)


def _pending(shape, out, dtype, after_relu: bool, sole_reader: bool):
    """(the pending norm after a backward through the pooling, what normalize_output gives, z)."""
    torch.manual_seed(5)
    y = (torch.randn(shape) * 2 + 0.5).to(dtype).contiguous(memory_format=torch.channels_last)
    z = LeanReLU()(y.requires_grad_(True) * 1) if after_relu else y.requires_grad_(True) * 1
    pooled, stats = goodness.pool_and_stats(z, max(out))
    pending = goodness.pending_norm(z, pooled, stats, sole_reader)
    want = goodness.normalize_output(z.detach(), stats)
    pooled.float().sum().backward()
    return pending, want, z


def check_norm_in_backward() -> None:
    """The pooling's backward writes z's boundary norm over a ReLU's output z that only the head
    reads, bit for bit what row_norm's kernel writes from the same statistics; anywhere else (no
    ReLU, another reader, the norm already read) it is made on reading, as before."""
    gpu_path(True)
    for shape, out, dtype in SHAPES:
        for after_relu, sole_reader in ((True, True), (False, True), (True, False)):
            pending, want, z = _pending(shape, out, dtype, after_relu, sole_reader)
            written = after_relu and sole_reader
            assert (pending.z is None) == written, (shape, dtype, after_relu, sole_reader)
            if written:  # over z itself: no memory of its own
                assert pending.normed.data_ptr() == z.data_ptr()
            assert torch.equal(goodness.boundary_norm(pending), want), (shape, dtype, after_relu, sole_reader)
    shape, out, dtype = SHAPES[0]
    y = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    z = LeanReLU()(y * 1)
    pooled, stats = goodness.pool_and_stats(z, max(out))
    early = goodness.pending_norm(z, pooled, stats, sole_reader=True)
    goodness.boundary_norm(early)  # read before the backward: the backward writes nothing
    z_before = z.detach().clone()
    pooled.float().sum().backward()
    assert early.normed is None and torch.equal(z.detach(), z_before)
    y.grad = None  # a second reader of z, wrongly not declared: the ReLU says so, never masks by the norm
    z = LeanReLU()(y * 1)
    pooled, stats = goodness.pool_and_stats(z, max(out))
    goodness.pending_norm(z, pooled, stats, sole_reader=True)
    try:
        (pooled.float().sum() + z.float().sum()).backward()
        raise AssertionError("the ReLU took a gradient other than the head's after z was overwritten")
    except RuntimeError as err:
        assert "sole_reader" in str(err), err


def check_row_norm() -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 2 * row_norm.BLOCK * row_norm.CHUNK_BLOCKS + 77) * 5 + 2
    want = torch.nn.functional.layer_norm(x, x.shape[1:])
    torch.testing.assert_close(row_norm.layer_norm_rows(x), want, atol=2e-5, rtol=1e-5)


def unit_step(on: bool):
    """One SFF step of a residual block unit with a pooled head, on the GPU path or the plain one."""
    gpu_path(on)
    torch.manual_seed(3)
    unit = LocalUnit(1, small_cnn_units((3, 16, 16), "block")[1], GoodnessHead(16, 10, pool=4), AlgoConfig())
    x = torch.randn(4, 16, 16, 16).contiguous(memory_format=torch.channels_last)
    out = unit(x, (), torch.randint(0, 10, (4,)))
    out.loss.backward()
    return [p.grad for p in unit.parameters()], out.x, out.loss.detach()


def check_unit_step() -> None:
    calls = []
    for name in ("fused_forward", "normalize_rows"):
        module = window_pool if name == "fused_forward" else row_norm
        kernel = getattr(module, name)
        setattr(module, name, lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    grads_gpu, x_gpu, loss_gpu = unit_step(True)
    # one read for the head and the norm's statistics; the norm written in the backward's pass
    assert calls == ["fused_forward"], calls
    grads, x_plain, loss = unit_step(False)
    assert len(calls) == 1
    torch.testing.assert_close(loss_gpu, loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_gpu, x_plain, atol=1e-4, rtol=1e-4)
    for a, b in zip(grads_gpu, grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    check_a_skip_of_z_keeps_z()


class _PushesItsOutput(torch.nn.Module):
    """A unit body that passes its own output on as a skip tensor too (as a plugin's may)."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu = torch.nn.Conv2d(16, 16, 3, padding=1), LeanReLU()

    def forward(self, x, skips):
        z = self.relu(self.conv(x))
        return z, skips + (z,)


def check_a_skip_of_z_keeps_z() -> None:
    """Where z is also a skip tensor for a later unit, the head's backward leaves z as it is:
    the later unit gets z, the next one z's norm, both as on the plain path."""
    got = []
    for on in (True, False):
        gpu_path(on)
        torch.manual_seed(4)
        unit = LocalUnit(1, _PushesItsOutput(), GoodnessHead(16, 10, pool=4), AlgoConfig())
        x = torch.randn(4, 16, 16, 16).contiguous(memory_format=torch.channels_last)
        out = unit(x, (), torch.randint(0, 10, (4,)))
        out.loss.backward()
        got.append((out.skips[-1], out.x))
    torch.testing.assert_close(got[0][0], got[1][0], atol=0, rtol=0)
    torch.testing.assert_close(got[0][1], got[1][1], atol=1e-4, rtol=1e-4)


def head_tail(fused: bool, shape, classes: int, dtype, margin: float, temperature: float, device="cpu"):
    """(goodness, loss, hits, the activations' gradient) through the kernels or torch's operations
    (tests/gpu/test_goodness_loss_gpu.py runs it on a GPU)."""
    torch.manual_seed(11)
    a = (torch.randn(shape, device=device) * 0.7).to(dtype).contiguous(memory_format=torch.channels_last)
    a.requires_grad_(True)
    y = torch.randint(0, classes, (shape[0],), device=device)
    if fused:
        g, loss, hits = goodness_loss.goodness_loss(a, y, classes, margin, temperature)
    else:
        g = goodness.goodness(a, "mean_square", classes)
        loss, hits = goodness.sff_loss(g, y, margin, temperature), (g.argmax(1) == y).sum()
    loss.backward()
    return g, loss, hits, a.grad


def check_goodness_loss() -> None:
    """The head's tail in two kernels against ff/goodness.py's operations: padding classes (10 of
    16, 1,000 of 1,008 over several blocks), margins and temperatures, fp32 and bf16."""
    cases = [((5, 16, 4, 4), 10, 1.0, 1.0), ((3, 1008, 4, 4), 1000, 0.5, 2.0), ((4, 24, 3, 2), 24, 0.0, 0.5)]
    for shape, classes, margin, temperature in cases:
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
            got = head_tail(True, shape, classes, dtype, margin, temperature)
            want = head_tail(False, shape, classes, dtype, margin, temperature)
            torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)  # fp32 sums either way
            torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
            assert got[2] == want[2] and got[3].dtype == dtype
            assert got[3].is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(got[3].float(), want[3].float(), atol=tol * 1e-2, rtol=tol)
            assert not got[3][:, classes:].any()  # the padding classes get no gradient


def check_crop_resize() -> None:
    """The stream's crop-and-resize kernel against the crops sliced and resized by resize.py (and
    so torch's antialiased interpolate): shrunk, enlarged, kept, mirrored, whole images and
    crops at their corners, in one batch of images of different sizes."""
    g = torch.Generator().manual_seed(0)
    sides = [(37, 50), (20, 16), (9, 7), (32, 32), (64, 45)]
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in sides]
    boxes = np.array([(3, 5, 30, 41), (0, 0, 20, 16), (2, 1, 5, 6), (0, 0, 32, 32), (40, 20, 24, 25)])
    mirror = np.array([True, False, True, False, True])
    for size in (32, 12):
        got = crop_resize.crop_resize(images, boxes, mirror, size)
        want = resize.crops_resized(images, boxes, mirror, size)  # CPU: the sliced path
        torch.testing.assert_close(got, want, atol=1e-3, rtol=0)  # of 0-255 values


if __name__ == "__main__":
    for check in (check_window_terms, check_spread, check_norm_in_backward, check_row_norm, check_unit_step, check_goodness_loss, check_crop_resize):
        check()
        print("ok", check.__name__, flush=True)
