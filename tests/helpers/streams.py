"""Encoded image shards for the streaming tests: a folder of JPEGs (and a PNG per class) of
varied sizes whose colour gives away the class, written as shards by `ffpipe data prepare`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ffpipe.config import DataConfig
from ffpipe.data.prepare import prepare_shards

COLOURS = np.array([[200, 40, 40], [40, 190, 60], [50, 60, 210]])


def image_folder(root: Path, per_class: int = 16, test_per_class: int = 6, sides=(28, 72),
                 seed: int = 0) -> Path:
    """root/train/<class>/*.jpg and root/test/<class>/*.jpg: noisy class colours, random sizes."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c, colour in enumerate(COLOURS):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(sides[0], sides[1], 2))
                pixels = (colour + rng.normal(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)
                suffix = ".png" if i == 0 else ".jpg"  # one PNG per class: not every file is a JPEG
                Image.fromarray(pixels).save(folder / f"img{i:04d}{suffix}")
    return root


def shards(tmp: Path, rows_per_shard: int = 10, **folder) -> Path:
    """The image folder's shards under tmp/shards (its train split cut into small shards)."""
    image_folder(tmp / "images", **folder)
    out = tmp / "shards"
    prepare_shards(DataConfig(name="image_folder", root=str(tmp / "images")), str(out), rows_per_shard)
    return out


def stream_config(root: Path, **keys) -> DataConfig:
    keys = {"stream": "on", "image_size": 16, "shuffle_window": 12, **keys}
    return DataConfig(name="parquet", root=str(root), **keys)


def stream_run(root: Path) -> list[str]:
    """A small exact run (tests/helpers/runs.py EXACT) that streams the shards under `root`:
    48 training images in batches of 8 (6 steps an epoch), 10 steps, so it ends mid-epoch."""
    return ["data.name=parquet", f"data.root={root}", "data.stream=on", "data.image_size=16",
            "data.shuffle_window=12", "model.name=small_cnn", "model.granularity=layer",
            "train.batch_size=8", "train.eval_batch_size=9", "train.epochs=2", "train.max_steps=10", "train.device=cpu",
            "train.deterministic=true", "run.plots=false", "run.progress=false", "train.log_every=2",
            "pipeline.dashboard=false", "run.checkpoint_every=2"]
