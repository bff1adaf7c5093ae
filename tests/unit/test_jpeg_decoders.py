"""data.jpeg_decoder: the stream's JPEG library by name, a clear error for one that does not load,
and nvImageCodec's CPU backend (where it is installed) decoding as PIL does and naming a damaged
file through GpuDecoder's CPU path."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from ffpipe.bench.imagenet_like import jpeg_bytes
from ffpipe.config_data import JPEG_DECODERS
from ffpipe.data.stream import decoders, nvimgcodec
from ffpipe.data.stream.crops import eval_box
from ffpipe.errors import ConfigError, DataError


def test_every_nvimgcodec_backend_is_a_config_value():
    assert {f"nvimgcodec-{b}" for b in nvimgcodec.BACKENDS} <= set(JPEG_DECODERS)


def test_auto_and_torchvision_always_load():
    assert decoders.codecs("torchvision").name == "torchvision"
    assert decoders.codecs("auto").name in ("torchcodec", "torchvision")


def test_a_library_that_does_not_load_says_what_to_install(monkeypatch):
    monkeypatch.setattr(nvimgcodec, "load", lambda backend: None)
    decoders.codecs.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"nvimgcodec-hw.*pip install 'ffpipe\[nvimgcodec\]'"):
            decoders.codecs("nvimgcodec-hw")
    finally:
        decoders.codecs.cache_clear()


@pytest.fixture
def cpu_backend():
    pytest.importorskip("nvidia.nvimgcodec", reason="nvImageCodec is optional")
    return decoders.nvimgcodec_codecs("cpu")


def test_nvimgcodecs_cpu_backend_decodes_as_pil_does(cpu_backend):
    blobs = [jpeg_bytes(seed) for seed in range(3)]
    data, _ = decoders.encoded(blobs)
    images = cpu_backend.jpegs(data, torch.device("cpu"))
    for blob, img in zip(blobs, images):
        pil = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).transpose(2, 0, 1)
        assert img.shape == pil.shape and img.dtype == torch.uint8
        assert torch.equal(img, torch.from_numpy(pil.copy()))  # both libjpeg-turbo


def test_a_damaged_jpeg_is_named_through_the_cpu_path(cpu_backend):
    blobs = [jpeg_bytes(seed) for seed in range(4)]
    blobs[2] = blobs[2][:300]
    names = [f"row {i} of shard s.parquet (train/img{i}.jpg)" for i in range(4)]
    decoder = decoders.GpuDecoder(torch.device("cpu"), 2, cpu_backend)
    try:
        with pytest.raises(DataError, match=r"row 2 of shard s\.parquet"):
            decoder.batch(blobs, names, lambda i, h, w: eval_box(h, w), 32, np.zeros(4, dtype=bool))
    finally:
        decoder.close()


class _RecordingModule:
    """Stands in for nvidia.nvimgcodec: records the device each Decoder is made for."""
    NVIMGCODEC_DEVICE_CPU_ONLY = -99999
    CPU_ONLY, HW_GPU_ONLY = "CPU_ONLY", "HW_GPU_ONLY"
    ColorSpec = type("ColorSpec", (), {"SRGB": 1})
    SampleFormat = type("SampleFormat", (), {"P_RGB": 2})

    def __init__(self):
        self.made = []

    def DecodeParams(self, **kw):  # noqa: N802 (nvImageCodec's names)
        return kw

    def Backend(self, kind):  # noqa: N802
        return kind

    def Decoder(self, device_id, max_num_cpu_threads, backends):  # noqa: N802
        self.made.append((device_id, backends))
        return object()


def test_the_cpu_backend_is_bound_to_no_device_even_for_a_gpu_stage():
    # bound to the GPU, its calls waited for all work queued there (H100, 2026-12-05): 454 ms with
    # 400 ms of products queued on another stream, against 39 ms bound to none
    module = _RecordingModule()
    nvimgcodec.NvImageCodec(module, "cpu")._decoder(torch.device("cuda", 0))
    nvimgcodec.NvImageCodec(module, "hw")._decoder(torch.device("cuda", 1))
    assert module.made == [(module.NVIMGCODEC_DEVICE_CPU_ONLY, ["CPU_ONLY"]), (1, ["HW_GPU_ONLY"])]
