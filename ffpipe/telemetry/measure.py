"""What a stage measures of itself besides its losses: peak memory, and time spent waiting."""
from __future__ import annotations

import resource
import sys
import time

import torch


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated on `device`, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


class Stopwatch:
    """Sums the seconds spent inside `with watch:` blocks (waiting on a neighbour, say)."""

    def __init__(self):
        self.total = 0.0

    def __enter__(self):
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.total += time.perf_counter() - self._t0
        return False
