"""Memory layout of activations: what the boundary norm, the head's pooling and the p2p transport
each ask of a tensor before they take its NHWC view."""
from __future__ import annotations

import torch


def is_nhwc(t: torch.Tensor) -> bool:
    """NHWC in memory (and not also plain contiguous, as 1x1 maps are)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
