"""A CUDA stream that keeps the legacy default stream's ordering with the other threads' work
but is not the default stream itself.

A stream created with the default flags ("blocking") is ordered with the legacy default stream
both ways, but not with other such streams. It was built to test whether nvJPEG's decodes waited
for a stage's step through blocking streams of nvJPEG's own (a stage on a blocking stream would
then keep every ordering the runtime relies on and free the decoder). Measured, they do not: an
nvJPEG call waits for every kernel queued on the device, on any stream (H100/H200, 2026-12-05,
docs/benchmarks.md "nvJPEG waits for the whole GPU"), and a ResNet-50 stage on a blocking stream
trained from streamed JPEGs no faster. So stages stay on the default stream; `ffpipe bench stream
--load blocking` (bench/device_load.py) uses this to put its load on such a stream.
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
