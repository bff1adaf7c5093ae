"""What the tests share, importable from any tier (`from tests.helpers import make_config`):
where the repository and the real datasets are, a tiny config, a free port. runs.py runs ffpipe as
users do and reads back what a run learned; datasets.py writes small datasets in the real on-disk
formats; machine.py looks at the processes and sockets of this machine (Ray heads, stage kills)."""
from __future__ import annotations

import socket
from itertools import islice
from pathlib import Path

import pytest

from ffpipe import config as config_mod
from ffpipe.backends import ray_nodes

REPO = Path(__file__).resolve().parents[2]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"

needs_fashion = pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
needs_mnist = pytest.mark.skipif(not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
                                 reason=f"MNIST not found at {MNIST_DIR}")


def make_config(*overrides: str) -> config_mod.Config:
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


def low_ports(start: int, count: int) -> list[int]:
    """`count` ports from `start` up that nothing listens on now, all below Linux's ephemeral range
    (32768-60999 by default), for the ports a Ray node binds some seconds after they are chosen.
    Ports the system hands out (free_port, a client's socket) and those Ray picks itself come from
    that range, so another test's processes cannot take these in between: a free_port() drawn for
    a head's job agent was once taken first, the agent never came up, and the submission waited
    its whole time. Callers use ranges of their own (the Ray tests run one at a time)."""
    top = ray_nodes.ephemeral_start()
    ports = list(islice((port for port in range(start, top) if ray_nodes.is_free(port, "")), count))
    if len(ports) < count:
        raise RuntimeError(f"fewer than {count} free ports from {start} to {top - 1}")
    return ports
