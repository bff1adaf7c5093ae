"""`ffpipe bench stream`: the streamed source on its own, as stage 0 runs it: encoded shards
read and checked, JPEGs decoded and cropped (ImageNet's training crop and mirror), normalised
batches of the run's dtype on the device. Per decoder: images/s (overall, and within epochs:
a set of a few shards starts a new epoch, whose first shards are read before its first batch,
every second or two), host memory (peak and growth), GPU memory, and each phase's share (read:
the reader threads; decode and crop: the crops threads).

`--make N` first writes an ImageNet-like image folder of N JPEGs (imagenet_like.py) and its
shards (`ffpipe data prepare`, 256 MB shards) under --root."""
from __future__ import annotations

import datetime
import json
import resource
import time
from pathlib import Path

import torch

from ffpipe.bench.device_load import DeviceLoad
from ffpipe.bench.devices import asked_device
from ffpipe.config import DataConfig
from ffpipe.data import StreamLoader, load_data, stream_options
from ffpipe.data.prepare import prepare_shards
from ffpipe.data.stream.decoders import codecs
from ffpipe.pipeline.sync import synchronize

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident memory of this process, MiB."""
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * resource.getpagesize() / 2**20
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_shards(root: Path, images: int, classes: int) -> dict:
    from ffpipe.bench.imagenet_like import make_image_folder

    started = time.perf_counter()
    made = make_image_folder(root / "images", images, classes, test_images=max(classes, images // 50))
    made["make_s"] = time.perf_counter() - started
    started = time.perf_counter()
    prepare_shards(DataConfig(name="image_folder", root=str(root / "images")), str(root / "shards"))
    made["prepare_s"] = time.perf_counter() - started
    return made


def measure(args, decode: str, workers: int, load: str, device: torch.device, library: str = "auto") -> dict:
    cfg = DataConfig(name="parquet", root=str(args.shards), stream="on", image_size=args.image_size,
                     decode=decode, decode_threads=args.threads, shuffle_window=args.window,
                     jpeg_decoder=library)
    data = load_data(cfg, seed=0)
    loader = StreamLoader(data.train, args.batch_size, device, data.mean, data.std, train=True,
                          flip=data.flip, dtype=DTYPES[args.dtype], workers=workers,
                          **stream_options(cfg, device))
    rss_before, _ = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with DeviceLoad(device, load) as busy:
        got = _stream_for(args.seconds, loader, device)
    rss_now, rss_peak = rss_mib()
    label = f"gpu {loader.codec.name}" if loader.gpu else "cpu"
    elapsed, images = got["seconds"], got["images"]
    within = (images - got["start_images"]) / max(elapsed - got["start_s"], 1e-9)
    return {"decode": label, "workers": loader.workers, "load": load, "images_per_s": images / elapsed,
            "images_per_s_within_epochs": within, "epoch_starts": got["epoch_starts"],
            "epoch_start_s": got["start_s"] / max(got["epoch_starts"], 1),
            "images": images, "load_products_per_s": busy.products_per_s,
            "rss_mib": rss_now, "rss_peak_mib": rss_peak, "rss_growth_mib": rss_now - rss_before,
            "gpu_peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0,
            "busy": {phase: s / elapsed for phase, s in loader.seconds.items()},
            "train_images": len(data.train), "shards": len(data.train.shards)}


def _stream_for(seconds: float, loader: StreamLoader, device: torch.device) -> dict:
    """Batches taken for about `seconds`, counted from the first batch (threads, nvJPEG and the
    first shards are up by then): {images, seconds, epoch_starts, start_images, start_s}, where
    the start_ figures are the first batches of the epochs after the first and the waits for them
    (from the epoch's last batch: a new epoch's first shards are read and checked before it
    starts). A set of a few shards starts an epoch every second or two; ImageNet once in ~5,000
    batches, so the rate within epochs is the one a long run sees."""
    got = {"images": 0, "epoch_starts": 0, "start_images": 0, "start_s": 0.0}
    epoch, started, last = 0, None, 0.0
    while started is None or time.perf_counter() - started < seconds:
        for i, (x, y) in enumerate(loader.batches(epoch)):
            now = time.perf_counter()
            if started is None:  # after the first batch: threads, nvJPEG and the first shards are up
                synchronize(device)
                started = last = time.perf_counter()
                loader.seconds = {}
                continue
            if i == 0:
                got["epoch_starts"] += 1
                got["start_images"] += len(y)
                got["start_s"] += now - last
            got["images"] += len(y)
            last = now
            if now - started >= seconds:
                break
        epoch += 1
    synchronize(device)
    return {**got, "seconds": time.perf_counter() - started}


def bench_stream(args) -> int:
    device = asked_device(args.device)
    root = Path(args.root)
    made = make_shards(root, args.make, args.classes) if args.make else {}
    args.shards = root / "shards" if (root / "shards").is_dir() else root
    decoders = args.decode or (["gpu", "cpu"] if device.type == "cuda" else ["cpu"])
    runs = [(d, lib) for d in decoders for lib in (args.jpeg_decoder if d == "gpu" else ["auto"])]
    rows = [measure(args, decode, workers, load, device, library)
            for decode, library in runs for workers in args.workers for load in args.load]
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": card, "torch": torch.__version__, "jpeg_library": codecs().name,
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "batch_size": args.batch_size,
              "image_size": args.image_size, "dtype": args.dtype, "made": made, "rows": rows}
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def format_table(result: dict) -> str:
    lines = [f"device: {result['device']}, torch {result['torch']}, GPU decoder {result['jpeg_library']}, "
             f"{result['date']}; batch "
             f"{result['batch_size']}, {result['image_size']} px, {result['dtype']}"]
    if result["made"]:
        m = result["made"]
        lines.append(f"made {m['images']:,} ImageNet-like JPEGs ({m['mean_kb']:.0f} KB each) in "
                     f"{m['make_s']:.0f} s, shards in {m['prepare_s']:.0f} s")
    lines.append(f"{'decode':<24}{'workers':>8}{'load':>8}{'images/s':>10}{'in epochs':>10}{'starts':>13}"
                 f"{'RSS MiB':>9}{'peak':>7}{'growth':>8}{'GPU MiB':>9}  busy share")
    for r in result["rows"]:
        busy = ", ".join(f"{k} {v:.0%}" for k, v in r["busy"].items())
        if r["load"] != "none":  # how much of the load got through beside the stream
            busy += f"; load {r['load_products_per_s']:,.0f} products/s"
        starts = f"{r['epoch_starts']} x {r['epoch_start_s']:.2f} s"
        lines.append(f"{r['decode']:<24}{r['workers']:>8}{r['load']:>8}{r['images_per_s']:>10,.0f}"
                     f"{r['images_per_s_within_epochs']:>10,.0f}{starts:>13}{r['rss_mib']:>9.0f}{r['rss_peak_mib']:>7.0f}"
                     f"{r['rss_growth_mib']:>8.0f}{r['gpu_peak_mib']:>9.0f}  {busy}")
    lines.append("in epochs: the rate without each later epoch's first batch and the wait for it (starts: "
                 "how many, and the mean wait)")
    return "\n".join(lines)
