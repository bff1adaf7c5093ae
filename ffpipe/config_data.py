"""The [data] section of the run configuration: which images, where, and how they are read."""
from __future__ import annotations

from dataclasses import dataclass

from ffpipe.config_fields import _f, _require

DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100", "imagenette", "image_folder", "parquet",
            "synthetic")
PREPARE_INPUTS = ("image_parquet",)  # read by `ffpipe data prepare` only, never a data.name
# data.jpeg_decoder: the stream's JPEG libraries (data/stream/decoders.py; nvImageCodec's backends
# in data/stream/nvimgcodec.py)
JPEG_DECODERS = ("auto", "torchcodec", "torchvision", "nvimgcodec-hw", "nvimgcodec-cuda", "nvimgcodec-hybrid",
                 "nvimgcodec-cpu")


@dataclass
class DataConfig:
    name: str = _f("fashion_mnist", "dataset, or a function of yours: 'package.module:function' "
                   "returning its splits (README, Bring your own)", DATASETS, plugin=True)
    root: str = _f("", "where the files are ('' = the dataset's usual places)")
    train_subset: float = _f(0, "0 = all; an integer N >= 1 = N images per class; "
                             "a fraction in (0, 1) = that share of each class")
    augment: bool = _f(True, "random crop with padding (and flips where they make sense), on device")
    cutout: int = _f(0, "training: zero a square of this side at a random place of every image "
                     "(DeVries & Taylor 2017); 0 = off")
    flip: str = _f("auto", "horizontal flips when augmenting: 'auto' = where they keep the class "
                   "(not digits), 'on', 'off'", ("auto", "on", "off"))
    image_size: int = _f(0, "resize every image to S x S (image folders: shorter side to S, then "
                         "a centre crop); 0 = as stored (imagenette: 160)")
    val_fraction: float = _f(0.0, "share of each training class held out as the validation split, "
                             "drawn by data.split_seed (0 = no validation split)")
    test_fraction: float = _f(0.2, "image_folder without a test/ or val/ subfolder: share of each "
                              "class held out as the test split, drawn by data.split_seed")
    split_seed: int = _f(0, "seed of the held-out validation and test parts; apart from train.seed "
                         "so that runs with different seeds are measured on the same images")
    on_device_max_mib: int = _f(4096, "GPU: keep the uint8 training images on the device up to this "
                                "size; larger sets stay in pinned host memory and move per batch")
    decode_threads: int = _f(0, "threads decoding JPEG/PNG files (0 = one per CPU core)")
    download: bool = _f(True, "when data.root is empty and the files are in none of the usual "
                        "places, download them through torchvision into ~/.cache/ffpipe/<name>")
    stream: str = _f("auto", "read the training and test images from encoded Parquet shards batch by "
                     "batch (data.name = 'parquet'; memory bounded by the shuffle window, not the "
                     "dataset): 'on', 'off', or 'auto' = when the decoded training split would exceed "
                     "data.in_memory_max_gib", ("auto", "on", "off"))
    in_memory_max_gib: float = _f(16.0, "data.stream = 'auto': the largest decoded training split "
                                  "read into memory whole; larger ones stream")
    shuffle_window: int = _f(8192, "streaming: rows shuffled together (the shards' order is "
                             "shuffled too); memory holds about two windows of encoded images")
    decode: str = _f("auto", "streaming: where JPEG/PNG images are decoded and cropped: 'gpu' "
                     "(nvJPEG), 'cpu' (PIL on data.decode_threads threads), 'auto' = gpu on a GPU",
                     ("auto", "gpu", "cpu"))
    jpeg_decoder: str = _f("auto", "streaming, data.decode = 'gpu': the JPEG library: 'auto' = TorchCodec "
                           "where it loads, else torchvision; or torchcodec, torchvision, nvimgcodec-hw "
                           "(the GPU's JPEG engine), nvimgcodec-cuda (CUDA kernels), nvimgcodec-hybrid, "
                           "nvimgcodec-cpu (libjpeg-turbo on nvImageCodec's threads)", JPEG_DECODERS)
    synthetic_train: int = _f(2048, "synthetic: training images")
    synthetic_test: int = _f(512, "synthetic: test images")
    synthetic_shape: list = _f(lambda: [3, 32, 32], "synthetic: image shape [C, H, W]")
    synthetic_classes: int = _f(10, "synthetic: number of classes")

    def validate(self):
        s = self.train_subset
        _require(s >= 0 and (s < 1 or float(s).is_integer()), "data.train_subset",
                 "must be 0 (all), a whole number of images per class, or a fraction in (0, 1)")
        _require(self.synthetic_train > 0 and self.synthetic_test > 0, "data.synthetic_train",
                 "synthetic_train and synthetic_test must be > 0")
        _require(len(self.synthetic_shape) == 3 and all(int(v) > 0 for v in self.synthetic_shape),
                 "data.synthetic_shape", "must be three positive integers [C, H, W]")
        _require(self.synthetic_classes >= 2, "data.synthetic_classes", "must be >= 2")
        _require(self.image_size >= 0, "data.image_size", "must be >= 0 (0 = as stored)")
        _require(self.cutout >= 0, "data.cutout", "must be >= 0 (0 = off)")
        _require(0 <= self.val_fraction < 1, "data.val_fraction", "must be in [0, 1) (0 = none)")
        _require(0 < self.test_fraction < 1, "data.test_fraction", "must be in (0, 1)")
        _require(self.on_device_max_mib >= 0, "data.on_device_max_mib",
                 "must be >= 0 (0 = always stream from host memory)")
        _require(self.decode_threads >= 0, "data.decode_threads", "must be >= 0 (0 = one per core)")
        _require(self.in_memory_max_gib >= 0, "data.in_memory_max_gib", "must be >= 0")
        _require(self.shuffle_window >= 1, "data.shuffle_window", "must be >= 1 (1 = shard order only)")
        _require(self.decode != "cpu" or self.jpeg_decoder == "auto", "data.jpeg_decoder",
                 "chooses the JPEG library of data.decode = 'gpu' (or 'auto' on a GPU); data.decode = "
                 "'cpu' decodes with PIL: set data.decode = 'gpu' or data.jpeg_decoder = 'auto'")
        _require(self.stream != "on" or self.name == "parquet", "data.stream",
                 "'on' reads Parquet shards: write them with `ffpipe data prepare --dataset NAME "
                 "--out DIR`, then set data.name = 'parquet' and data.root = DIR")
        _require(self.name != "image_folder" or self.root, "data.root",
                 "must name the image folder when data.name = 'image_folder' (one subfolder per class)")
        _require(self.name != "parquet" or self.root, "data.root",
                 "must name the folder (or URI) of the shards written by `ffpipe data prepare`")
