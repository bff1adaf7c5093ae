"""`python -m ffpipe.bench.decoders`: the stream's GPU decoder taken apart, on ImageNet-like JPEGs
held in memory (no shards, no reader): each JPEG library's batched decode alone, then ffpipe's
GpuDecoder (decode, then the crop kernel), on 1, 2, ... threads, with the device idle or kept busy
(`--load`, bench/device_load.py), each thread on the device's current stream or on a high-priority
stream of its own (`--stream high`: a library that decodes on the caller's stream gets its kernels
ahead of the load's; torchvision's decoder uses a stream of its own); `--queued MS` times one call
made just after MS ms of work was queued on another stream, and torch's own work (a small kernel,
a pinned copy) the same way: a decoder slower than those waits for more than its own work. This
made docs/benchmarks.md's "Where the GPU stream's time went", "nvJPEG waits for the whole GPU" and
nvImageCodec's tables. On a CPU the same code runs the libraries' CPU decoders (to test it).
"""
from __future__ import annotations

import argparse
import itertools
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np
import torch

from ffpipe.bench.device_load import LOADS, DeviceLoad
from ffpipe.bench.imagenet_like import jpeg_bytes
from ffpipe.data.stream.crops import batch_draws, train_box
from ffpipe.config_data import JPEG_DECODERS
from ffpipe.data.stream.decoders import GpuDecoder, codecs, encoded
from ffpipe.errors import ConfigError
from ffpipe.pipeline.sync import synchronize


def make_jpegs(n: int) -> list[bytes]:
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(jpeg_bytes, range(n), chunksize=16))


STREAMS = ("current", "high")


def thread_stream(device: torch.device, stream: str):
    """The stream a thread works on: the current one, or its own at the device's highest priority."""
    if stream == "current" or device.type != "cuda":
        return nullcontext()
    return torch.cuda.stream(torch.cuda.Stream(device, priority=-1))


def rate(work, batches: int, threads: int, seconds: float, batch_size: int, device: torch.device,
         stream: str = "current") -> float:
    """Images/s of `work(k)` (batch k of `batches`) called on `threads` threads for about `seconds`."""
    work(0)
    synchronize(device)
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(t: int) -> None:
        k = t
        with thread_stream(device, stream):
            while True:  # one call at least: a thread started late on a busy host still counts
                work(k % batches)
                done[t] += batch_size
                k += threads
                if time.perf_counter() >= stop:
                    break

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(loop, range(threads)))
    synchronize(device)
    return sum(done) / (time.perf_counter() - started)


class SideQueue:
    """Matrix products on a stream of their own, `queue(ms)` about ms milliseconds of them (one
    product timed first): work a decode does not depend on. A CPU has no queue: nothing is queued."""

    def __init__(self, device: torch.device, side: int = 8192):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.stream = torch.cuda.Stream(device)
            self.a = torch.randn(side, side, device=device, dtype=torch.bfloat16)
            for _ in range(3):
                torch.mm(self.a, self.a)
            synchronize(device)
            started = time.perf_counter()
            for _ in range(10):
                torch.mm(self.a, self.a)
            synchronize(device)
            self.product_ms = (time.perf_counter() - started) * 100

    def queue(self, ms: float) -> None:
        if self.cuda and ms > 0:
            with torch.cuda.stream(self.stream):
                for _ in range(max(1, round(ms / self.product_ms))):
                    torch.mm(self.a, self.a)

    def busy(self) -> bool:
        return self.cuda and not self.stream.query()


def waits(work, side: SideQueue, queued: list[float], device: torch.device) -> list[tuple]:
    """(ms queued, ms the call took, whether the queue still ran when it returned) for one call of
    `work` made just after about that much work was queued on the side stream. A call that waits
    only for its own work returns with a long queue still running; one that waits for the device
    takes the queue's time and returns after it."""
    rows = []
    for ms in queued:
        synchronize(device)
        side.queue(ms)
        started = time.perf_counter()
        work(0)
        if device.type == "cuda":  # the call's own work, on its own stream, is done
            torch.cuda.current_stream(device).synchronize()
        rows.append((ms, (time.perf_counter() - started) * 1e3, side.busy()))
    synchronize(device)
    return rows


def reference_work(device: torch.device, batch_size: int) -> dict:
    """Torch's own work of a batch's size, timed as a decoder call is: one small kernel, and a
    batch of decoded 500 x 375 images copied from pinned memory. Where these take as long as the
    queue too, the GPU runs nothing else before the queue is done, whatever the decoder does."""
    small = torch.zeros(1 << 20, device=device)
    host = torch.zeros(batch_size * 3 * 375 * 500, dtype=torch.uint8)
    host = host.pin_memory() if device.type == "cuda" else host
    return {"a small kernel": lambda k: small.add_(1.0),
            "pinned copy": lambda k: host.to(device, non_blocking=True)}


def measure(args, device: torch.device) -> list[dict]:
    blobs = make_jpegs(args.images)
    batches = [blobs[i:i + args.batch_size] for i in range(0, len(blobs) - args.batch_size + 1, args.batch_size)]
    encoded_batches = [encoded(b)[0] for b in batches]
    draws = batch_draws(0, 0, 0, args.batch_size)
    names, mirror = ["-"] * args.batch_size, np.zeros(args.batch_size, dtype=bool)
    side = SideQueue(device) if args.queued else None
    rows, waited = [], []
    for codec in loaded(args.jpeg_decoder, lambda codec: codec.jpegs(encoded_batches[0][:1], device)):
        decoder = GpuDecoder(device, 2, codec)
        parts = {
            "decode": lambda k: codec.jpegs(encoded_batches[k], device),
            "GpuDecoder": lambda k: decoder.batch(batches[k], names, lambda i, h, w: train_box(h, w, draws[i]),
                                                  args.image_size, mirror),
        }
        rows += rates(args, codec.name, parts, len(batches), device)
        if side is not None:
            for part, work in parts.items():
                waited += [{"library": codec.name, "part": part, "queued_ms": q, "call_ms": ms, "queue_left": left}
                           for q, ms, left in waits(work, side, args.queued, device)]
        decoder.close()
    if side is not None:  # the same timing of torch's own work: what any GPU work waits for
        waited += [{"library": "torch", "part": part, "queued_ms": q, "call_ms": ms, "queue_left": left}
                   for part, work in reference_work(device, args.batch_size).items()
                   for q, ms, left in waits(work, side, args.queued, device)]
    if waited:
        print("\n| library | part | ms queued on another stream | ms the call took "
              "| that queue still running after |\n|---|---|---|---|---|")
        for w in waited:
            print(f"| {w['library']} | {w['part']} | {w['queued_ms']:.0f} | {w['call_ms']:.1f} | {w['queue_left']} |")
    return rows + waited


def loaded(libraries: list[str], decode_one) -> list:
    """The Codecs of each library that loads and runs here (`decode_one(codecs)` decodes a JPEG);
    the others are named and left out."""
    found = []
    for library in libraries:
        try:
            codec = codecs(library)
            decode_one(codec)
            found.append(codec)
        except ConfigError as err:
            print(f"left out: {err}")
    return found


def rates(args, library: str, parts: dict, batches: int, device: torch.device) -> list[dict]:
    """Images/s of each part under each load, thread count and stream (one table row each)."""
    rows = []
    for load in args.load:
        with DeviceLoad(device, load):
            for part, work in parts.items():
                for threads, stream in itertools.product(args.threads, args.stream):
                    ips = rate(work, batches, threads, args.seconds, args.batch_size, device, stream)
                    rows.append({"library": library, "part": part, "threads": threads, "stream": stream,
                                 "load": load, "images_per_s": ips})
                    print(f"| {library} | {part} | {threads} | {stream} | {load} | {ips:,.0f} |", flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m ffpipe.bench.decoders", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2048, help="ImageNet-like JPEGs made in memory")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--load", nargs="+", default=["none"], choices=LOADS)
    parser.add_argument("--stream", nargs="+", default=["current"], choices=STREAMS,
                        help="each thread on the current stream, or on a high-priority one of its own")
    parser.add_argument("--jpeg-decoder", nargs="+", default=["torchvision", "torchcodec"],
                        choices=[d for d in JPEG_DECODERS if d != "auto"], help="the libraries measured")
    parser.add_argument("--seconds", type=float, default=3.0, help="per row")
    parser.add_argument("--queued", type=float, nargs="*", default=[], metavar="MS",
                        help="also time one call made just after MS milliseconds of matrix products "
                             "were queued on another stream (does the decoder wait for the device?)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}; "
          f"{args.images} JPEGs, batch {args.batch_size}")
    print("| library | part | threads | stream | load | img/s |\n|---|---|---|---|---|---|")
    return measure(args, device)


if __name__ == "__main__":
    main()
