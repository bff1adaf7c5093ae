"""How a run's stage processes are started: in this process (local), by torchrun, as Ray actors.
Each backend owns its driver; `train` picks one."""
from __future__ import annotations

from pathlib import Path

from ffpipe.config import Config
from ffpipe.errors import require_installed


def train(cfg: Config, resume: Path | None = None) -> tuple[Path, dict | None]:
    """Train with the configured backend; returns the run folder and its summary (torchrun: every
    rank returns; only rank 0's summary is complete, the others return None)."""
    if cfg.pipeline.backend == "torchrun":
        from ffpipe.backends.torchrun import train_torchrun
        return train_torchrun(cfg, resume)
    if cfg.pipeline.backend == "ray":
        require_installed("ray", "ray", "pipeline.backend = 'ray'")  # before any data is read
        from ffpipe.backends.ray_backend import train_ray
        return train_ray(cfg, resume)
    from ffpipe.backends.local import train_local
    return train_local(cfg, resume)
