"""Batch norm for batches of more than 2^31 elements on a GPU.

torch's fast batch-norm kernels (channels_last, 32-bit indices) give way to generic 64-bit ones
once a layer's input passes 2^31 elements: ResNet-50's 256 x 56 x 56 maps do at batch 2,739.
On an H200 (2026-11-28, bf16) one such layer's backward reduction then took 41 ms where the fast
kernel takes ~1 ms, and the SFF step at batch 3,072 spent a third of its time there. BP never
gets that far (it runs out of memory first); a stage that holds one unit at a time does.

LargeBatchNorm normalises over the whole batch as before, but on a CUDA tensor past the limit it
computes the statistics and the backward's reductions per slice of the batch with torch's fused
kernels (those of SyncBatchNorm) and combines them: the same statistics up to summation order.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.autograd import Function

INDEX_LIMIT = 2**31 - 1


def _slices(x: torch.Tensor, limit: int) -> tuple[torch.Tensor, ...]:
    """x cut along the batch into parts of at most `limit` elements (contiguous in x's format)."""
    per_sample = max(1, x[0].numel())
    return x.split(max(1, limit // per_sample))


def _own_format(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    channels_last = like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last)
    return t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class _SlicedNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, limit):
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
        ctx.limit = limit
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
        grad_x = torch.empty_like(x)
        for (g, part), grad_part in zip(pairs, _slices(grad_x, ctx.limit)):
            grad_part.copy_(torch.batch_norm_backward_elemt(g, part, mean, invstd, w, sum_dy, sum_dy_xmu, counts))
        return grad_x, grad_w, grad_b, None, None, None, None, None


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


class LargeBatchNorm(BatchNormCopy):
    """nn.BatchNorm2d (same parameters, buffers and state-dict keys), sliced past the limit."""

    def _check_input_dim(self, x):
        if x.dim() != 4:
            raise ValueError(f"expected 4D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.is_cuda and x.numel() > INDEX_LIMIT):
            return super().forward(x)
        if self.track_running_stats:
            self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        running = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
        return _SlicedNorm.apply(x, self.weight, self.bias, *running, momentum, self.eps, INDEX_LIMIT)


def allow_large_batches(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d under `module` replaced by a LargeBatchNorm with its state."""
    return replace_batchnorms(module, LargeBatchNorm, lambda m: type(m) is nn.BatchNorm2d)
