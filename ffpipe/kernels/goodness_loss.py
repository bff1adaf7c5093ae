"""The goodness head's tail on a GPU: goodness, the margin loss and the hit count in one kernel,
the loss's gradient to the head's activations in one more.

Per step every unit turns its head's activations a (B x C' x h x w, C' the classes padded to a
multiple of 8) into g_BC = mean over h x w of a^2, the margin loss L = mean_b(logsumexp_c((g_c +
m [c != y]) / tau) - (g_y) / tau) and the count of argmax g == y (ff/goodness.py). In torch that is
some fifteen small kernels forward and seven backward, a few microseconds each even in a CUDA
graph: with 51 units (ResNet-152) about 900 launches a step, some 2% of it (H100, 2026-12-06).
Here one program per sample reads its activations once, sums each class's squares in fp32 and
keeps a running logsumexp and argmax over blocks of classes; the backward rereads the activations
and writes a * 2/hw * (softmax - onehot) * dL / (B tau) in their dtype. The values agree with
ff/goodness.py's up to fp32 summation order (tests/helpers/interpreted.py, tests/gpu); the CPU,
other goodness kinds and other layouts keep torch's operations.
"""
from __future__ import annotations

import torch
from torch.autograd import Function

from ffpipe.kernels import tl, triton, triton_runs
from ffpipe.kernels.layout import is_nhwc

BLOCK_C = 128  # classes per program step
TILE = 2048    # activations per program step (pixels x classes)


def fuses(a: torch.Tensor, kind: str) -> bool:
    """Whether the kernels take `a`: the paper's goodness of a channels_last map Triton runs on."""
    return kind == "mean_square" and a.dim() == 4 and triton_runs(a) and is_nhwc(a)


def goodness_loss(a: torch.Tensor, y: torch.Tensor, num_classes: int, margin: float, temperature: float):
    """(g_BC fp32, the mean margin loss, the number of samples whose argmax g is y) of the head's
    activations `a`; only the loss has a gradient (to `a`). Only where `fuses(a, 'mean_square')`."""
    return _GoodnessLoss.apply(a, y, num_classes, margin, temperature)


def _blocks(hw: int) -> int:
    return max(1, min(triton.next_power_of_2(hw), TILE // BLOCK_C))


class _GoodnessLoss(Function):
    @staticmethod
    def forward(ctx, a, y, num_classes, margin, temperature):
        n, padded, h, w = a.shape
        g = torch.empty(n, num_classes, device=a.device, dtype=torch.float32)
        lse = torch.empty(n, device=a.device, dtype=torch.float32)
        loss_b = torch.empty_like(lse)
        hit_b = torch.empty(n, device=a.device, dtype=torch.int32)
        _forward[(n,)](a, y, g, lse, loss_b, hit_b, num_classes, padded, h * w, 1.0 / (h * w), float(margin),
                       1.0 / temperature, BLOCK_C=BLOCK_C, BLOCK_P=_blocks(h * w))
        ctx.save_for_backward(a, y, g, lse)
        ctx.margin, ctx.inv_tau = float(margin), 1.0 / temperature
        loss, hits = loss_b.mean(), hit_b.sum()
        ctx.mark_non_differentiable(g, hits)
        ctx.set_materialize_grads(False)  # no zeros made for g's and the count's gradients
        return g, loss, hits

    @staticmethod
    def backward(ctx, _grad_g, grad_loss, _grad_hits):
        a, y, g, lse = ctx.saved_tensors
        if grad_loss is None:
            return None, None, None, None, None
        n, padded, h, w = a.shape
        grad_a = torch.empty_like(a)
        _backward[(n, triton.cdiv(padded, BLOCK_C))](a, y, g, lse, grad_loss.float().contiguous(), grad_a, g.shape[1],
                                                     padded, h * w, 2.0 / (h * w), ctx.margin, ctx.inv_tau,
                                                     1.0 / n, BLOCK_C=BLOCK_C, BLOCK_P=_blocks(h * w))
        return grad_a, None, None, None, None


if triton is not None:
    @triton.jit
    def _forward(a_ptr, y_ptr, g_ptr, lse_ptr, loss_ptr, hit_ptr, C, CP, HW, inv_hw, margin, inv_tau,
                 BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
        # One program per sample: its activations are HW rows of CP channels (channels_last).
        b = tl.program_id(0)
        label = tl.load(y_ptr + b).to(tl.int32)
        base = a_ptr + b.to(tl.int64) * HW * CP
        run_max = tl.full((), float("-inf"), tl.float32)
        run_sum = tl.zeros((), tl.float32)
        best = tl.full((), float("-inf"), tl.float32)
        best_c = tl.zeros((), tl.int32)
        logit_y = tl.zeros((), tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            ok = cs < C
            g = _squares(base, cs, ok, HW, CP, BLOCK_C, BLOCK_P) * inv_hw
            tl.store(g_ptr + b.to(tl.int64) * C + cs, g, mask=ok)
            logit = tl.where(ok, (g + tl.where(cs != label, margin, 0.0)) * inv_tau, float("-inf"))
            new_max = tl.maximum(run_max, tl.max(logit, axis=0))
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logit - new_max), axis=0)
            run_max = new_max
            logit_y += tl.sum(tl.where(cs == label, logit, 0.0), axis=0)
            # the first class of the largest goodness, as torch.argmax (later blocks must beat it)
            g_ok = tl.where(ok, g, float("-inf"))
            block_best = tl.max(g_ok, axis=0)
            block_c = tl.min(tl.where(g_ok == block_best, cs, C), axis=0)
            better = block_best > best
            best_c = tl.where(better, block_c, best_c)
            best = tl.where(better, block_best, best)
        lse = run_max + tl.log(run_sum)
        tl.store(lse_ptr + b, lse)
        tl.store(loss_ptr + b, lse - logit_y)
        tl.store(hit_ptr + b, (best_c == label).to(tl.int32))

    @triton.jit
    def _squares(base, cs, ok, HW, CP, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
        # Per class of `cs`: the sum over the sample's HW pixels of its activation squared (fp32).
        acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
        for p0 in range(0, HW, BLOCK_P):
            ps = p0 + tl.arange(0, BLOCK_P)
            mask = (ps < HW)[:, None] & ok[None, :]
            x = tl.load(base + ps.to(tl.int64)[:, None] * CP + cs[None, :], mask=mask, other=0.0).to(tl.float32)
            acc += x * x
        return tl.sum(acc, axis=0)

    @triton.jit
    def _backward(a_ptr, y_ptr, g_ptr, lse_ptr, grad_loss_ptr, out_ptr, C, CP, HW, two_over_hw, margin, inv_tau,
                  inv_n, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
        # One program per (sample, block of classes): dL/dg_c = (softmax_c - [c = y]) * dL / (B tau),
        # and each activation's gradient a * 2/hw * dL/dg_c; zero for the padding classes.
        b, cb = tl.program_id(0), tl.program_id(1)
        label = tl.load(y_ptr + b).to(tl.int32)
        cs = cb * BLOCK_C + tl.arange(0, BLOCK_C)
        ok = cs < C
        g = tl.load(g_ptr + b.to(tl.int64) * C + cs, mask=ok, other=0.0)
        logit = (g + tl.where(cs != label, margin, 0.0)) * inv_tau
        p = tl.exp(logit - tl.load(lse_ptr + b))
        scale = tl.load(grad_loss_ptr) * inv_n * inv_tau * two_over_hw
        d_g = tl.where(ok, (p - tl.where(cs == label, 1.0, 0.0)) * scale, 0.0)
        start = b.to(tl.int64) * HW * CP
        in_row = cs < CP
        for p0 in range(0, HW, BLOCK_P):
            ps = p0 + tl.arange(0, BLOCK_P)
            offs = start + ps.to(tl.int64)[:, None] * CP + cs[None, :]
            mask = (ps < HW)[:, None] & in_row[None, :]
            x = tl.load(a_ptr + offs, mask=mask, other=0.0)
            tl.store(out_ptr + offs, (x.to(tl.float32) * d_g[None, :]).to(x.dtype), mask=mask)
