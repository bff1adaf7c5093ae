"""Batch norm on a GPU: trains past 2^31 elements, and writes its input's gradient over its input.

Two things a stage that holds one unit at a time meets and BP does not:
- Past 2^31 elements (ResNet-50's 256 x 56 x 56 maps at batch 2,739) torch's fast batch-norm
  kernels (channels_last, 32-bit indices) give way to generic 64-bit ones: on an H200
  (2026-11-28, bf16) one such layer's backward reduction took 41 ms where the fast kernel takes
  ~1 ms. Here the statistics and the backward's reductions run per slice of the batch with
  torch's fused kernels (those of SyncBatchNorm) and are combined: the same statistics up to
  summation order.
- The backward's input gradient is a new batch-sized tensor, allocated while the layer's saved
  input, its incoming gradient and the unit's output are all alive: the peak of a bottleneck
  unit's step. In ffpipe's models every batch norm reads a convolution's output that nothing else
  reads, and the convolution's backward needs its own input, not that output; so the gradient is
  written over the saved input (a Triton kernel, element by element) and the backward allocates
  nothing batch-sized. ResNet-152's largest unit at 224 px: 1.5 MiB per sample less at its peak.
LeanBatchNorm does both for every CUDA batch in training (torch's BatchNorm2d elsewhere).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.autograd import Function

from ffpipe.kernels import tl, triton, triton_runs
from ffpipe.kernels.layout import is_nhwc

INDEX_LIMIT = 2**31 - 1
# Without Triton the gradient goes through torch's kernel slice by slice and is copied over the
# input: a temporary of at most this many elements (128 MiB in bf16).
COPY_SLICE = 2**26
BLOCK = 2048


def _slices(x: torch.Tensor, limit: int) -> tuple[torch.Tensor, ...]:
    """x cut along the batch into parts of at most `limit` elements (contiguous in x's format)."""
    per_sample = max(1, x[0].numel())
    return x.split(max(1, limit // per_sample))


def _own_format(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    channels_last = like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last)
    return t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _overwritable(x: torch.Tensor) -> bool:
    """A convolution's output of its own (not a view): what ffpipe's models give a batch norm."""
    return x.requires_grad and x._base is None and type(x.grad_fn).__name__ == "ConvolutionBackward0"


if triton is not None:
    @triton.jit
    def _grad_input(g_ptr, x_ptr, out_ptr, mean_ptr, proj_ptr, grad_mean_ptr, scale_ptr, numel,
                    channels, inner, BLOCK: tl.constexpr):
        # torch's batch_norm_backward_elemt, element by element (so `out` may be `x`), in fp32
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = idx < numel
        c = (idx // inner) % channels
        g = tl.load(g_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + c, mask=mask, other=0.0)
        proj = tl.load(proj_ptr + c, mask=mask, other=0.0)
        grad_mean = tl.load(grad_mean_ptr + c, mask=mask, other=0.0)
        scale = tl.load(scale_ptr + c, mask=mask, other=0.0)
        out = (g - grad_mean - (x - mean) * proj) * scale
        tl.store(out_ptr + idx, out.to(out_ptr.dtype.element_ty), mask=mask)


def _input_gradient(grad_out, x, mean, invstd, weight, sum_dy, sum_dy_xmu, counts, out):
    """The input's gradient written into `out` (which may be `x`; same format as x and grad_out)."""
    if triton_runs(x):
        total = counts.sum(dtype=torch.float32)
        grad_mean, proj = sum_dy / total, sum_dy_xmu / total * invstd * invstd
        scale = invstd * weight if weight is not None else invstd
        channels = x.shape[1]
        inner = 1 if is_nhwc(x) else x[0, 0].numel()  # elements between one channel and the next
        _grad_input[(triton.cdiv(x.numel(), BLOCK),)](grad_out, x, out, mean, proj, grad_mean, scale, x.numel(),
                                                      channels, inner, BLOCK=BLOCK)
        return out
    for g, part, out_part in zip(_slices(grad_out, COPY_SLICE), _slices(x, COPY_SLICE), _slices(out, COPY_SLICE)):
        out_part.copy_(torch.batch_norm_backward_elemt(g, part, mean, invstd, weight, sum_dy, sum_dy_xmu, counts))
    return out


class _SlicedNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, limit, overwrite):
        x = _own_format(x, x)
        parts = _slices(x, limit)
        stats = [torch.batch_norm_stats(part, eps) for part in parts]
        means = torch.stack([mean for mean, _ in stats])
        invstds = torch.stack([invstd for _, invstd in stats])
        # counts made on the device (a CUDA graph cannot capture a copy from host memory)
        counts = torch.cat([torch.full((1,), part.numel() // x.shape[1], dtype=means.dtype, device=x.device)
                            for part in parts])
        mean, invstd = torch.batch_norm_gather_stats_with_counts(
            x, means, invstds, running_mean, running_var, momentum, eps, counts)
        out = torch.empty_like(x)
        for part, out_part in zip(parts, _slices(out, limit)):
            torch.batch_norm_elemt(part, weight, bias, mean, invstd, eps, out=out_part)
        ctx.save_for_backward(x, weight, mean, invstd, counts.to(torch.int32))
        ctx.limit, ctx.overwrite = limit, overwrite
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, invstd, counts = ctx.saved_tensors
        grad_out = _own_format(grad_out, x)
        pairs = list(zip(_slices(grad_out, ctx.limit), _slices(x, ctx.limit)))
        affine = weight is not None
        sums = [torch.batch_norm_backward_reduce(g, part, mean, invstd, weight, True, affine, affine)
                for g, part in pairs]
        sum_dy, sum_dy_xmu = (torch.stack([s[i] for s in sums]).sum(0) for i in (0, 1))
        grad_w = torch.stack([s[2] for s in sums]).sum(0) if affine else None
        grad_b = torch.stack([s[3] for s in sums]).sum(0) if affine else None
        w = weight.to(mean.dtype) if affine else None
        # x is read only here: its memory takes the gradient (see the module's docstring)
        grad_x = x.detach() if ctx.overwrite else torch.empty_like(x)
        _input_gradient(grad_out, x, mean, invstd, w, sum_dy, sum_dy_xmu, counts, out=grad_x)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


class BatchNormCopy(nn.modules.batchnorm._BatchNorm):
    """A batch norm made from another: its settings, parameters and buffers (so the same
    state-dict keys), on its device. The base of the replacements below and of replicas'
    SyncedBatchNorm."""

    def __init__(self, source: nn.modules.batchnorm._BatchNorm):
        device = next(iter([*source.parameters(), *source.buffers()])).device
        super().__init__(source.num_features, source.eps, source.momentum, source.affine,
                         source.track_running_stats, device=device)
        self.load_state_dict(source.state_dict())

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")


def replace_batchnorms(module: nn.Module, make, wanted) -> nn.Module:
    """Every module under `module` for which wanted(it) holds replaced by make(it)."""
    for name, child in module.named_children():
        if wanted(child):
            setattr(module, name, make(child))
        else:
            replace_batchnorms(child, make, wanted)
    return module


class LeanBatchNorm(BatchNormCopy):
    """nn.BatchNorm2d (same parameters, buffers and state-dict keys); on CUDA in training, sliced
    past the index limit and writing the input's gradient over a convolution's output."""

    def _check_input_dim(self, x):
        if x.dim() != 4:
            raise ValueError(f"expected 4D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.is_cuda):
            return super().forward(x)
        if self.track_running_stats:
            self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        running = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
        return _SlicedNorm.apply(x, self.weight, self.bias, *running, momentum, self.eps, INDEX_LIMIT,
                                 _overwritable(x))


def lean_batchnorms(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d under `module` replaced by a LeanBatchNorm with its state."""
    return replace_batchnorms(module, LeanBatchNorm, lambda m: type(m) is nn.BatchNorm2d)
