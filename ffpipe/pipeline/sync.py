"""Host syncs: with a deadline (training), and plain (timing).

A GPU stage queues its work and waits for the device only on log, checkpoint and evaluation
steps. Behind that queue there may be a receive from a neighbour (NCCL) that will never arrive
because the neighbour died: a plain synchronize would then wait forever. This waits on an event
with a deadline instead and turns the wait into an error that says what was waited for.
"""
from __future__ import annotations

import time

import torch

from ffpipe.errors import NeighbourError

POLL_S = 0.0005


def synchronize(device: torch.device) -> None:
    """Wait for everything queued on `device` (to time it; benchmarks and profiles only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # note: a CPU-GPU sync point


def wait_for_device(device: torch.device, timeout_s: float, who: str, what: str) -> None:
    if device.type != "cuda":
        return
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(device))
    deadline = time.monotonic() + timeout_s
    while not done.query():  # note: the CPU-GPU sync point, polled
        if time.monotonic() > deadline:
            raise NeighbourError(
                f"{who}: its GPU did not finish the work queued before {what} within {timeout_s:.0f} s "
                "(pipeline.timeout_s): a transfer from a neighbouring stage never arrived, or the GPU hung")
        time.sleep(POLL_S)
