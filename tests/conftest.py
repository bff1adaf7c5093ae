"""Shared test helpers: tiny configs, where the real datasets are, one torch thread per worker."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from ffpipe import config as config_mod

REPO = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"

# pytest-xdist runs one worker per core: one intra-op thread each avoids oversubscription.
torch.set_num_threads(1)

needs_fashion = pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
needs_mnist = pytest.mark.skipif(not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
                                 reason=f"MNIST not found at {MNIST_DIR}")


def make_config(*overrides: str, **sections) -> config_mod.Config:
    """A small, fast config on synthetic data; overrides as 'section.key=value' strings."""
    base = ["data.name=synthetic", "data.synthetic_train=256", "data.synthetic_test=64",
            "data.synthetic_shape=[3, 16, 16]", "train.batch_size=32", "train.eval_batch_size=64",
            "train.device=cpu", "run.progress=false", "run.plots=false", "train.log_every=2"]
    return config_mod.load(None, base + list(overrides))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
