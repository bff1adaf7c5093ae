"""What keeps the replicas of a stage one learner: batch norm over the whole batch, one gradient.

Each replica runs the stage's units on its shard of every batch. For the learning to be that of
the unreplicated stage:
  - batch norm normalises with the statistics of the whole batch (SyncedBatchNorm: one
    all-gather of each replica's mean, variance and count per layer in the forward, one
    all-reduce of two per-channel sums in the backward);
  - each replica's loss is weighted by its share of the batch (rows / batch), so the sum over
    replicas is the whole batch's mean loss, and the gradients are summed over the replicas
    (one all-reduce per unit, started as soon as that unit's backward is done, so it overlaps
    the next unit's compute) before the clip and the optimizer step.
Every replica starts from the same weights (same seed) and applies the same update, so they stay
equal. SyncedBatchNorm below runs on gloo (CPU) and, with torch's fused kernels, on GPUs.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd import Function

from ffpipe.kernels.batchnorm import BatchNormCopy, replace_batchnorms


class _SyncedNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, group, eps):
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        rows = xf.numel() // xf.shape[1]  # per channel; from the shape, so no host sync
        count = torch.full((1,), float(rows), device=x.device)
        if rows > 0:
            var, mean = torch.var_mean(xf, dim=dims, unbiased=False)
        else:
            var = mean = torch.zeros(x.shape[1], device=x.device)
        mine = torch.cat([mean, var, count])
        every = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(every, mine, group=group)
        stats = torch.stack(every)  # replicas x (2C + 1)
        c = x.shape[1]
        means, variances, counts = stats[:, :c], stats[:, c:2 * c], stats[:, 2 * c:]
        total = counts.sum()
        # Chan's combination of per-replica moments: exact, no sum of squares to lose digits.
        mean = (counts * means).sum(0) / total
        var = (counts * (variances + (means - mean) ** 2)).sum(0) / total
        invstd = torch.rsqrt(var + eps)
        shape = [1, c] + [1] * (x.dim() - 2)
        xhat = (xf - mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.group, ctx.total = group, total
        ctx.mark_non_differentiable(mean, var, total)
        out = xhat * weight.view(shape) + bias.view(shape) if weight is not None else xhat
        return out.to(x.dtype), mean, var, total

    @staticmethod
    def backward(ctx, grad_out, _mean, _var, _total):
        x, weight, mean, invstd = ctx.saved_tensors
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        g = grad_out.float()
        xhat = (x.float() - mean.view(shape)) * invstd.view(shape)
        local = torch.cat([g.sum(dims), (g * xhat).sum(dims)])
        sums = local.clone()
        dist.all_reduce(sums, group=ctx.group)
        sum_g, sum_gx = sums.chunk(2)
        scale = invstd if weight is None else invstd * weight.float()
        grad_x = (g - (sum_g / ctx.total).view(shape) - xhat * (sum_gx / ctx.total).view(shape)) * scale.view(shape)
        grad_w = grad_b = None
        if weight is not None:  # this replica's share: the gradient all-reduce adds the others'
            grad_b, grad_w = local.chunk(2)
        return grad_x.to(x.dtype), grad_w, grad_b, None, None


class _SyncedNormCUDA(Function):
    """The same on GPUs with torch's fused batch-norm kernels (those of nn.SyncBatchNorm, which
    reads its gathered counts back to the host in every forward: a sync per layer that stalls a
    stage's queue of kernels; here every replica has rows, so nothing is read back)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, group):
        if not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous()
        c = x.shape[1]
        mean, invstd = torch.batch_norm_stats(x, eps)
        count = torch.full((1,), x.numel() // c, dtype=mean.dtype, device=x.device)
        mine = torch.cat([mean, invstd, count])
        every = torch.empty(dist.get_world_size(group), mine.numel(), dtype=mine.dtype, device=x.device)
        dist.all_gather_into_tensor(every, mine, group=group)
        means, invstds, counts = torch.split(every, c, dim=1)
        mean, invstd = torch.batch_norm_gather_stats_with_counts(
            x, means, invstds, running_mean, running_var, momentum, eps, counts.view(-1).to(running_mean.dtype)
            if running_mean is not None else counts.view(-1))
        ctx.save_for_backward(x, weight, mean, invstd, counts.view(-1).to(torch.int32))
        ctx.group = group
        return torch.batch_norm_elemt(x, weight, bias, mean, invstd, eps)

    @staticmethod
    def backward(ctx, grad_out):
        if not grad_out.is_contiguous(memory_format=torch.channels_last):
            grad_out = grad_out.contiguous()
        x, weight, mean, invstd, counts = ctx.saved_tensors
        sum_dy, sum_dy_xmu, grad_w, grad_b = torch.batch_norm_backward_reduce(
            grad_out, x, mean, invstd, weight, True, weight is not None, weight is not None)
        both = torch.cat([sum_dy, sum_dy_xmu])
        dist.all_reduce(both, group=ctx.group)
        sum_dy, sum_dy_xmu = both.chunk(2)
        w = weight.to(mean.dtype) if weight is not None else None
        grad_x = torch.batch_norm_backward_elemt(grad_out, x, mean, invstd, w, sum_dy, sum_dy_xmu, counts)
        return grad_x, grad_w, grad_b, None, None, None, None, None


class SyncedBatchNorm(BatchNormCopy):
    """Batch norm over the rows of every replica of a stage (training); running statistics as
    usual (evaluation)."""

    def __init__(self, source: nn.modules.batchnorm._BatchNorm, group):
        super().__init__(source)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        if x.is_cuda:
            if self.track_running_stats:
                self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            running = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
            return _SyncedNormCUDA.apply(x, self.weight, self.bias, *running, momentum, self.eps, self.group)
        out, mean, var, total = _SyncedNorm.apply(x, self.weight, self.bias, self.group, self.eps)
        if self.track_running_stats:
            self._track(mean.detach(), var.detach(), total)
        return out

    @torch.no_grad()
    def _track(self, mean, var, total) -> None:
        self.num_batches_tracked += 1
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * total / (total - 1).clamp(min=1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


def sync_batchnorm(module: nn.Module, group) -> nn.Module:
    """Every batch norm under `module` replaced by its synced copy (same parameters and buffers)."""
    return replace_batchnorms(module, lambda bn: SyncedBatchNorm(bn, group),
                              lambda m: isinstance(m, nn.modules.batchnorm._BatchNorm))


class GradientSum:
    """Each unit's gradients summed over the replicas: start() after the unit's backward, finish()
    before the optimizer step."""

    def __init__(self, group):
        self.group = group
        self._pending: list[tuple] = []

    def start(self, params: list[nn.Parameter]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._pending.append((dist.all_reduce(flat, group=self.group, async_op=True), flat, grads))

    def finish(self) -> None:
        for work, flat, grads in self._pending:
            work.wait()
            parts = flat.split([g.numel() for g in grads])
            torch._foreach_copy_(grads, [part.view_as(g) for part, g in zip(parts, grads)])
        self._pending.clear()


def share_of(rows: int, batch: int) -> float:
    """A replica's weight: its rows over the batch's."""
    return rows / batch
