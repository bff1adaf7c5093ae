"""Streaming on a GPU: nvJPEG's crops agree with PIL's (the same boxes, the same antialiased
resize; only the JPEG decoders' rounding differs), PNGs and damaged JPEGs take the CPU path (the
damaged one named), and a run trains from streamed shards with the crops made on the GPU."""
import numpy as np
import pytest
import torch

from ffpipe.bench.imagenet_like import jpeg_bytes
from ffpipe.config_data import JPEG_DECODERS
from ffpipe.data import load_data, training_loader
from ffpipe.data.stream.crops import batch_draws, eval_box, train_box
from ffpipe.data.stream.decoders import CpuDecoder, GpuDecoder, codecs, encoded
from ffpipe.data.stream.order import epoch_order
from ffpipe.data.stream.reader import ShardStore
from ffpipe.errors import ConfigError, DataError
from tests.helpers.runs import run_ffpipe, summary
from tests.helpers.streams import shards, stream_config, stream_run

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.fixture(params=JPEG_DECODERS)
def codec(request):
    """Each JPEG library of data.jpeg_decoder that loads and runs here (nvImageCodec is optional,
    and not every backend runs on every GPU)."""
    try:
        found = codecs(request.param)
        found.jpegs(encoded([jpeg_bytes(0)])[0], CUDA)
    except ConfigError as err:
        pytest.skip(str(err))
    return found


def rows(root, n):
    data = load_data(stream_config(root, image_size=32), 0)
    order = epoch_order(data.train.rows_per_shard, 0, 0, 1, shuffle=False)
    store = ShardStore(data.train, order, 0, ahead=8)
    try:
        return store.take(order.use_ids[:n], slice(0, n))
    finally:
        store.close()


@pytest.mark.parametrize("train", [True, False])
def test_gpu_crops_agree_with_pil_crops(tmp_path, train, codec):
    root = shards(tmp_path, per_class=12, sides=(60, 200))
    blobs, _, names = rows(root, 36)
    draws = batch_draws(0, 0, 0, len(blobs))
    box_of = (lambda i, h, w: train_box(h, w, draws[i])) if train else (lambda i, h, w: eval_box(h, w))
    mirror = draws[:, -1] < 0.5
    cpu, gpu = CpuDecoder(2), GpuDecoder(CUDA, 2, codec)
    try:
        a = cpu.batch(blobs, names, box_of, 32, mirror).float()
        b = gpu.batch(blobs, names, box_of, 32, mirror).cpu()
    finally:
        cpu.close()
        gpu.close()
    diff = (a - b).abs()
    print(f"{codec.name} vs pil crops ({'train' if train else 'eval'}): mean |diff| {diff.mean():.2f}, "
          f"99th percentile {diff.flatten().quantile(0.99):.1f} (0-255)")
    assert diff.mean() < 3.0 and diff.flatten().quantile(0.99) < 24  # noise images: sharp edges


def test_a_jpeg_nvjpeg_refuses_is_named_by_the_cpu_path(tmp_path, codec):
    root = shards(tmp_path, per_class=4)
    blobs, _, names = rows(root, 6)
    blobs = [np.asarray(b) for b in blobs]
    blobs[3] = blobs[3][:60]
    gpu = GpuDecoder(CUDA, 2, codec)
    try:
        with pytest.raises(DataError, match=r"row 3 of shard .*\.parquet \(train/"):
            gpu.batch(blobs, names, lambda i, h, w: eval_box(h, w), 32, np.zeros(6, dtype=bool))
    finally:
        gpu.close()


def test_a_run_trains_from_streamed_shards_with_gpu_crops(tmp_path):
    root = shards(tmp_path)
    run = [o for o in stream_run(root) if o != "train.device=cpu"] + ["train.device=cuda", "data.decode=gpu"]
    run_ffpipe(run + [f"run.dir={tmp_path / 'run'}", "pipeline.backend=local", "pipeline.stages=2"])
    assert summary(tmp_path / "run")["test_accuracy"] > 0.6
    data = load_data(stream_config(root, decode="gpu"), 0)
    x, y = next(iter(training_loader(data, stream_config(root, decode="gpu"), 8, 0, CUDA).batches(0)))
    assert x.is_cuda and y.is_cuda and x.shape == (8, 3, 16, 16)
