"""Device kernels and the memory layout they ask of a tensor; no model, no training loop.

  layout.py     is_nhwc: channels_last in memory (the boundary norm, the head's pooling and the
                p2p transport each take a map's NHWC view only when it is one)
  row_norm.py   the boundary norm's layer norm of long rows in Triton kernels
  window_pool.py  the pooled head's average pooling (equal or adaptive windows): one read for
                it and the boundary norm's statistics
  window_whole.py  that forward for windows that fit a tile (ResNet18's maps): each read whole
  window_spread.py  its backward: one pass over z for its gradient masked by the block's last
                ReLU and the boundary norm the unit passes on
  rounding.py   `rounded`: fp32 rounded to bf16/fp16 inside a kernel as torch rounds
  batchnorm.py  LeanBatchNorm: batch norm past 2^31 elements, its input gradient written over its
                input (a Triton kernel); BatchNormCopy, the base of every batch-norm replacement
  relu.py       LeanReLU: a ReLU whose backward masks the incoming gradient in place
  crop_resize.py  the streamed batch's crops cut, resized (antialiased) and mirrored from its
                decoded images in one kernel

Triton is imported here once: CPU-only installs go without it, and `triton_runs(t)` says
whether a tensor's device can run Triton's kernels.
"""
from __future__ import annotations

import functools

import torch

try:  # Triton comes with torch's CUDA builds; CPU-only installs do without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = tl = None


def triton_runs(t: torch.Tensor) -> bool:
    """Whether Triton's kernels can run on `t`'s device (a CUDA GPU Triton compiles for)."""
    return triton is not None and t.is_cuda and _triton_compiles_for(t.device.index or 0)


@functools.lru_cache(maxsize=None)
def _triton_compiles_for(device_index: int) -> bool:
    """Triton compiles for compute capability 7.0 (Volta) and later."""
    return torch.cuda.get_device_capability(device_index)[0] >= 7


__all__ = ["tl", "triton", "triton_runs"]
