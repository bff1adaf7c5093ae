"""The device a benchmark's --device asks for: 'auto' is the GPU where one is visible."""
from __future__ import annotations

import torch

from ffpipe.errors import ConfigError


def asked_device(asked: str) -> torch.device:
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if asked == "auto" else asked)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA GPU is visible; use --device cpu")
    return device
