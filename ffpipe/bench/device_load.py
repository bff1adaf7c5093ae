"""A busy device for `ffpipe bench stream --load`: a thread that keeps the device's queue full of
large matrix products while the stream is measured, as stage 0's training step does.

Why: alone, the GPU stream made 12,209 img/s of 224 px crops on an H100; a 1-GPU ResNet-50 run
trained from the same shards at 2,835 img/s, its stage 0 waiting on data 97% of the time, every
decode thread inside nvJPEG's decode call the whole run (py-spy, 2026-12-05). A decode that waits
for the training step's queued work would do that. `--load default` puts the products on the
device's default stream (where a stage trains), `--load side` on a non-blocking stream of their
own, `--load blocking` on a blocking one (ordered with the default stream, not with other
blocking streams: pipeline/streams.py). A decoder slowed by `default` alone waits on blocking
streams of its own (a stage on a blocking stream fixes it); by `default` and `blocking`, on the
default stream itself; by all three, on the device (an allocation that syncs it, or SM time).
"""
from __future__ import annotations

import threading
import time
from contextlib import nullcontext

import torch

LOADS = ("none", "default", "side", "blocking")
SIDE = {"cuda": 4096, "cpu": 256}  # the products' side: ~0.2 ms each on an H100 (bf16), ~1 ms on a CPU core
QUEUED = 16   # products queued before the thread waits for them: the queue stays full, never long


class DeviceLoad:
    """`with DeviceLoad(device, where) as load:` keeps `device` busy in the block ('none': idle);
    load.products_per_s says how much work it got through (a slowed load is a decoder that took
    the device from the step)."""

    def __init__(self, device: torch.device, where: str):
        if where not in LOADS:
            raise ValueError(f"load {where!r}: choose one of {', '.join(LOADS)}")
        self.device, self.where, self.side = device, where, SIDE.get(device.type, SIDE["cpu"])
        self.products, self.seconds = 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ffpipe-device-load", daemon=True)

    def __enter__(self) -> "DeviceLoad":
        if self.where != "none":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def products_per_s(self) -> float:
        return self.products / self.seconds if self.seconds else 0.0

    def _run(self) -> None:
        cuda = self.device.type == "cuda"
        dtype = torch.bfloat16 if cuda else torch.float32
        a = torch.randn(self.side, self.side, device=self.device, dtype=dtype)
        out = torch.empty_like(a)
        with self._stream(cuda):
            started = time.perf_counter()
            while not self._stop.is_set():
                for _ in range(QUEUED):
                    torch.mm(a, a, out=out)
                if cuda:
                    torch.cuda.current_stream(self.device).synchronize()
                self.products += QUEUED
            self.seconds = time.perf_counter() - started

    def _stream(self, cuda: bool):
        """A new thread starts on the default stream; 'side' moves it to a (non-blocking) stream of
        its own, 'blocking' to a blocking one (pipeline/streams.py)."""
        if not cuda or self.where == "default":
            return nullcontext()
        if self.where == "blocking":
            from ffpipe.pipeline.streams import blocking_stream

            return torch.cuda.stream(blocking_stream(self.device))
        return torch.cuda.stream(torch.cuda.Stream(self.device))

