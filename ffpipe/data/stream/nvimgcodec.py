"""nvImageCodec's JPEG decoders as one of the stream's `Codecs` (decoders.py), by backend:
- 'hw': the GPU's hardware JPEG engine (A100, H100, H200), the nvJPEG path torchvision and
  TorchCodec take;
- 'cuda': nvJPEG's CUDA-kernel decoder (Huffman on the GPU or the CPU, the rest in kernels);
- 'hybrid': Huffman decoding on nvImageCodec's CPU threads, the rest on the GPU;
- 'cpu': libjpeg-turbo on nvImageCodec's own C++ threads (no Python, no GIL), copied to the device.
Measured (docs/benchmarks.md, the two "nvImageCodec's ..." sections, one H100): torchvision's and
TorchCodec's nvJPEG and the 'hw' and 'hybrid' backends here wait for every kernel queued on the
device before they return, so a training stage's GPU idles while they decode; torch's own kernels
and copies do not wait. The 'cpu' backend, made for no device, does not wait either, and ResNet-50
(one GPU) trained from the stream at its speed on synthetic data (3,470 against 3,481 img/s; 2,931
with TorchCodec), at the CPU's rate: about 5,100 img/s on 16 cores. nvImageCodec is optional
(`pip install 'ffpipe[nvimgcodec]'`); its GPU results are ordered before the caller's CUDA
stream's next work.
"""
from __future__ import annotations

import os
import threading

import numpy as np
import torch

from ffpipe.errors import ConfigError

BACKENDS = {"hw": "HW_GPU_ONLY", "cuda": "GPU_ONLY", "hybrid": "HYBRID_CPU_GPU", "cpu": "CPU_ONLY"}


class Undecodable(ValueError):
    """A JPEG of the batch that nvImageCodec could not decode (GpuDecoder then decodes the batch on
    the CPU, which names the file)."""


class NvImageCodec:
    """Batched JPEG decoding by nvImageCodec on one backend, to RGB uint8 3 x H x W tensors on the
    device. One nvImageCodec Decoder per thread and device: the stream's decode threads each call
    it with batches of their own."""

    def __init__(self, module, backend: str):
        self.nv, self.backend = module, backend
        self.params = module.DecodeParams(color_spec=module.ColorSpec.SRGB,
                                          sample_format=module.SampleFormat.P_RGB)  # planar: C x H x W
        self._local = threading.local()

    def _decoder(self, device: torch.device):
        decoders = self._local.__dict__.setdefault("decoders", {})
        if device not in decoders:
            kind = getattr(self.nv, BACKENDS[self.backend])
            # the CPU backend on no device: bound to the GPU, each call waited for all the work
            # queued there (454 ms with 400 ms queued; 39 ms bound to none)
            device_id = (self.nv.NVIMGCODEC_DEVICE_CPU_ONLY if device.type != "cuda" or self.backend == "cpu"
                         else device.index if device.index is not None else torch.cuda.current_device())
            try:
                # its CPU threads: one per core (0), not data.decode_threads (not measured)
                decoders[device] = self.nv.Decoder(device_id=device_id, max_num_cpu_threads=0,
                                                   backends=[self.nv.Backend(kind)])
            except RuntimeError as err:  # not a batch's fault: no CPU fallback, say it
                raise ConfigError(f"data.jpeg_decoder = 'nvimgcodec-{self.backend}' does not run on "
                                  f"{device} ({err}): choose another data.jpeg_decoder") from None
        return decoders[device]

    def jpegs(self, data: list, device: torch.device) -> list[torch.Tensor]:
        """The batch of JPEGs (1-D uint8 CPU tensors) decoded, on `device`, ready on its current
        stream (nvImageCodec orders its work before that stream's next)."""
        sources = [self.nv.CodeStream(t.numpy()) for t in data]  # views of the batch's bytes
        stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
        images = self._decoder(device).decode(sources, params=self.params, cuda_stream=stream)
        failed = [i for i, img in enumerate(images) if img is None]
        if failed:
            raise Undecodable(f"nvImageCodec could not decode {len(failed)} image(s) of the batch")
        if self.backend == "cpu":  # host images: each pinned, then copied without waiting for the device
            host = [torch.from_numpy(np.asarray(img)) for img in images]
            if device.type != "cuda":
                return host
            return [h.pin_memory().to(device, non_blocking=True) for h in host]
        return [torch.from_dlpack(img) for img in images]


def load(backend: str):
    """An NvImageCodec for `backend` (a key of BACKENDS), or None where nvImageCodec is not
    installed or does not load (no CUDA, no nvJPEG library)."""
    # errors only: at its default level it logs a warning and an error for every JPEG it refuses,
    # which the CPU path then names once (a user's own setting stays)
    os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "1")
    try:
        from nvidia import nvimgcodec
    except (ImportError, OSError, RuntimeError):
        return None
    return NvImageCodec(nvimgcodec, backend)
