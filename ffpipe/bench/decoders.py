"""`python -m ffpipe.bench.decoders`: the stream's GPU decoder taken apart, on ImageNet-like JPEGs
held in memory (no shards, no reader): each JPEG library's batched decode alone, then ffpipe's
GpuDecoder (decode, then the crop kernel), on 1, 2, ... threads, with the device idle or kept busy
(`--load`, bench/device_load.py). This made docs/benchmarks.md's "Where the GPU stream's time
went" table. On a CPU the same code runs the libraries' CPU decoders (to test it).
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import torch

from ffpipe.bench.device_load import LOADS, DeviceLoad
from ffpipe.bench.imagenet_like import jpeg_bytes
from ffpipe.data.stream.crops import batch_draws, train_box
from ffpipe.data.stream.decoders import GpuDecoder, encoded, torchcodec_codecs, torchvision_codecs
from ffpipe.pipeline.sync import synchronize


def make_jpegs(n: int) -> list[bytes]:
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(jpeg_bytes, range(n), chunksize=16))


def rate(work, batches: int, threads: int, seconds: float, batch_size: int, device: torch.device) -> float:
    """Images/s of `work(k)` (batch k of `batches`) called on `threads` threads for about `seconds`."""
    work(0)
    synchronize(device)
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(t: int) -> None:
        k = t
        while time.perf_counter() < stop:
            work(k % batches)
            done[t] += batch_size
            k += threads

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(loop, range(threads)))
    synchronize(device)
    return sum(done) / (time.perf_counter() - started)


def measure(args, device: torch.device) -> list[dict]:
    blobs = make_jpegs(args.images)
    batches = [blobs[i:i + args.batch_size] for i in range(0, len(blobs) - args.batch_size + 1, args.batch_size)]
    encoded_batches = [encoded(b)[0] for b in batches]
    draws = batch_draws(0, 0, 0, args.batch_size)
    names, mirror = ["-"] * args.batch_size, np.zeros(args.batch_size, dtype=bool)
    rows = []
    for codec in [c for c in (torchvision_codecs(), torchcodec_codecs()) if c is not None]:
        decoder = GpuDecoder(device, 2, codec)
        parts = {
            "decode": lambda k: codec.jpegs(encoded_batches[k], device),
            "GpuDecoder": lambda k: decoder.batch(batches[k], names, lambda i, h, w: train_box(h, w, draws[i]),
                                                  args.image_size, mirror),
        }
        for load in args.load:
            with DeviceLoad(device, load):
                for part, work in parts.items():
                    for threads in args.threads:
                        ips = rate(work, len(batches), threads, args.seconds, args.batch_size, device)
                        rows.append({"library": codec.name, "part": part, "threads": threads, "load": load, "images_per_s": ips})
                        print(f"| {codec.name} | {part} | {threads} | {load} | {ips:,.0f} |", flush=True)
        decoder.close()
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m ffpipe.bench.decoders", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2048, help="ImageNet-like JPEGs made in memory")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--load", nargs="+", default=["none"], choices=LOADS)
    parser.add_argument("--seconds", type=float, default=3.0, help="per row")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}; "
          f"{args.images} JPEGs, batch {args.batch_size}")
    print("| library | part | threads | load | img/s |\n|---|---|---|---|---|")
    return measure(args, device)


if __name__ == "__main__":
    main()
