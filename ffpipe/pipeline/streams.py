"""A CUDA stream that keeps the legacy default stream's ordering with the other threads' work
but is not the default stream itself.

A stage trains on its device's default (legacy) stream: every other thread's work on that stream
is ordered after its step, which the transports and loaders rely on. But so is any work a library
issues on a stream created with the default flags, which waits for the default stream's queued
work: a ResNet-50 stage trained from streamed JPEGs at 0.83x its rate on synthetic data because
each nvJPEG decode waited for the step queued before it (H100, 2026-12-05; docs/benchmarks.md).
A stream created with the default flags ("blocking") is still ordered with the legacy default
stream both ways, but not with other such streams: a stage on one keeps today's ordering with
every thread that uses the default stream and stops making other blocking streams wait.
torch's own streams are all non-blocking, so this one is made through the CUDA driver.
"""
from __future__ import annotations

import ctypes
import functools

import torch

CU_STREAM_DEFAULT = 0  # the driver's flag for a blocking stream (cuStreamCreate)


@functools.lru_cache(maxsize=None)
def _driver() -> ctypes.CDLL:
    return ctypes.CDLL("libcuda.so.1")


def blocking_stream(device: torch.device) -> torch.cuda.ExternalStream:
    """A new blocking CUDA stream on `device`, as a torch stream (never destroyed: one per stage
    thread, for the life of the process)."""
    with torch.cuda.device(device):
        torch.cuda.current_stream(device).synchronize()  # the device's primary context is current here
        handle = ctypes.c_void_p()
        status = _driver().cuStreamCreate(ctypes.byref(handle), CU_STREAM_DEFAULT)
        if status != 0:
            raise RuntimeError(f"cuStreamCreate failed on {device} with CUDA driver error {status}")
        return torch.cuda.ExternalStream(handle.value, device=device)
