"""A ReLU whose backward writes the gradient over the incoming one.

torch's ReLU backward makes a new tensor the size of its output. At the end of a residual block
that tensor is allocated while the block's output, the gradient arriving from the goodness head
and the block's saved maps are all alive: the peak of the unit's step (ResNet-152's first blocks
at 224 px: 1.5 MiB per sample). Masking the arriving gradient in place gives the same values bit
for bit with no allocation.

That is only sound where the arriving gradient belongs to this ReLU alone. In ffpipe's ResNets it
does: every ReLU output goes to one convolution, a max pool, a goodness head (whose backward makes
a new tensor; an aux term's gradient is summed into a new one), or to a block's convolution and
its shortcut together, whose two gradients autograd sums first. A gradient that is not a plain
dense tensor (an expanded one) is not written: it gets a new tensor as in torch.

A gradient that arrives already masked by this ReLU's output (the pooled head's, written so by
kernels/window_pool.py, which leaves it in `premasked`) is passed on as it is: masking it again
would give the same values for one more read and write of the whole map. Its output may then
have been overwritten by the boundary norm (window_pool.norm_in_backward): it is not read again.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.autograd import Function


class _ReLUMaskingGrad(Function):
    @staticmethod
    def forward(ctx, x):
        out = torch.relu_(x)
        ctx.mark_dirty(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        premasked, ctx.premasked = getattr(ctx, "premasked", None), None
        if premasked is not None and grad is premasked[0] and grad._version == premasked[1]:
            return grad  # the very tensor the head masked, unchanged (not summed with another)
        if getattr(ctx, "overwritten", False):  # out now holds the boundary norm, not the ReLU's output
            raise RuntimeError("ffpipe: a unit's output was overwritten by its boundary norm in the pooled head's "
                               "backward, but its ReLU got a gradient other than the head's: something else "
                               "reads the output (norm_in_backward's sole_reader must be False there)")
        out, = ctx.saved_tensors
        if _dense(grad) and not grad.requires_grad:
            return torch.ops.aten.threshold_backward.grad_input(grad, out, 0, grad_input=grad)
        return torch.ops.aten.threshold_backward(grad, out, 0)


def lean_relu_node(t: torch.Tensor):
    """The LeanReLU backward node that made `t` (t is its output), or None."""
    node = t.grad_fn
    return node if type(node) is _ReLUMaskingGrad._backward_cls else None


def _dense(t: torch.Tensor) -> bool:
    """Every element in memory of its own, in a layout the in-place kernel keeps."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


class LeanReLU(nn.Module):
    """nn.ReLU(inplace=True) whose backward masks the incoming gradient in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _ReLUMaskingGrad.apply(x)
        return torch.relu_(x)


def lean_relus(module: nn.Module) -> nn.Module:
    """Every in-place nn.ReLU under `module` replaced by a LeanReLU (a torchvision block's one ReLU
    module serves all of its calls)."""
    for name, child in module.named_children():
        if type(child) is nn.ReLU and child.inplace:
            setattr(module, name, LeanReLU())
        else:
            lean_relus(child)
    return module
