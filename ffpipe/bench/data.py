"""`ffpipe bench data`: how fast each source feeds stage 0. For every dataset: the cold read
(files -> uint8 arrays, including JPEG/PNG decoding), then training batches through the full
DeviceLoader (gather, copy to the device, crop/flip, normalise) for a fixed time; optionally the
same through Parquet shards written to a temporary folder."""
from __future__ import annotations

import dataclasses
import datetime
import json
import tempfile
import time
from pathlib import Path

import torch

from ffpipe.bench.devices import asked_device
from ffpipe.config import DATASETS, DataConfig, from_dict, merge
from ffpipe.data import DataBundle, DeviceLoader, StreamLoader, StreamSplit, load_data, training_loader
from ffpipe.data.prepare import prepare_shards
from ffpipe.errors import DataError, FFPipeError
from ffpipe.pipeline.sync import synchronize

# The built-in datasets (not the user's folders or shards), synthetic first.
DEFAULT_DATASETS = ("synthetic", *(n for n in DATASETS if n not in ("synthetic", "image_folder", "parquet")))
# CIFAR-10-sized synthetic data, so that the synthetic row is comparable to the real ones.
SYNTHETIC = {"synthetic_train": 50_000, "synthetic_test": 10_000, "synthetic_shape": [3, 32, 32]}


def loader_rate(data: DataBundle, cfg: DataConfig, device: torch.device, batch_size: int, seconds: float,
                max_device_mib: float | None) -> tuple[float, DeviceLoader | StreamLoader]:
    """Training images per second through the loader, augmentation on, after one warm-up batch
    (a streamed split through its StreamLoader: `ffpipe bench stream` splits its time by phase)."""
    if isinstance(data.train, StreamSplit):
        loader = training_loader(data, cfg, batch_size, 0, device)
    else:
        loader = DeviceLoader(data.train, batch_size, device, data.mean, data.std, train=True, seed=0,
                              augment=True, flip=data.flip, max_device_mib=max_device_mib)
    if len(loader) == 0:
        raise DataError(f"--batch-size {batch_size} is larger than the training set ({len(data.train)})")
    next(iter(loader.batches(0)))
    synchronize(device)
    images, epoch, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _, y in loader.batches(epoch):
            images += len(y)
            if time.perf_counter() - start >= seconds:
                break
        epoch += 1
    synchronize(device)
    return images / (time.perf_counter() - start), loader


def _measure(cfg: DataConfig, path: str, args, device: torch.device, limit) -> dict:
    start = time.perf_counter()
    data = load_data(cfg, seed=0)
    read_s = time.perf_counter() - start
    rate, loader = loader_rate(data, cfg, device, args.batch_size, args.seconds, limit)
    placement = "stream" if isinstance(loader, StreamLoader) else "host" if loader.host else "device"
    return {"path": path, "images": len(data.train), "shape": "x".join(map(str, data.train.shape)),
            "read_s": read_s, "placement": placement,
            "batch_size": args.batch_size, "images_per_s": rate}


def _dataset_rows(name: str, args, device: torch.device, limit) -> list[dict]:
    tree = {"data": {"name": name, "root": args.root, "download": False,
                     **(SYNTHETIC if name == "synthetic" else {})}}
    try:
        cfg = from_dict(merge(tree, args.overrides)).data
        rows = [{"dataset": name, **_measure(cfg, "direct", args, device, limit)}]
        if args.via_parquet and name != "parquet":
            with tempfile.TemporaryDirectory(prefix="ffpipe-bench-") as tmp:
                start = time.perf_counter()
                prepare_shards(cfg, tmp)
                prepare_s = time.perf_counter() - start
                shards = dataclasses.replace(cfg, name="parquet", root=tmp)
                rows.append({"dataset": name, **_measure(shards, "parquet", args, device, limit),
                             "prepare_s": prepare_s})
        return rows
    except FFPipeError as err:  # a dataset that is not here (or misconfigured) is skipped, not fatal
        return [{"dataset": name, "path": "-", "error": str(err)}]


def bench_data(args) -> dict:
    device = asked_device(args.device)
    limit = {"device": None, "host": 0}.get(args.placement, DataConfig().on_device_max_mib)
    rows = [row for name in (args.dataset or DEFAULT_DATASETS)
            for row in _dataset_rows(name, args, device, limit)]
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": card, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "rows": rows}


def format_table(result: dict) -> str:
    head = f"{'dataset':<14}{'path':<9}{'images':>8}  {'shape':<11}{'read s':>8}{'prep s':>8}  " \
           f"{'placement':<10}{'batch':>6}{'images/s':>12}"
    lines = [f"device: {result['device']}, torch {result['torch']}, {result['threads']} threads, "
             f"{result['date']}", head]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"{r['dataset']:<14}{'-':<9}skipped: {r['error'][:90]}")
            continue
        prep = f"{r['prepare_s']:.2f}" if "prepare_s" in r else "-"
        lines.append(f"{r['dataset']:<14}{r['path']:<9}{r['images']:>8}  {r['shape']:<11}"
                     f"{r['read_s']:>8.2f}{prep:>8}  {r['placement']:<10}{r['batch_size']:>6}"
                     f"{r['images_per_s']:>12,.0f}")
    return "\n".join(lines)


def run_bench(args) -> int:
    result = bench_data(args)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
