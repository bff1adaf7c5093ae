"""Every source read directly from files in its real format: pixels and labels exactly, and each
kind of bad input answered with an error that names the file or key and the fix."""
import numpy as np
import pytest
import torch
from PIL import Image

from ffpipe.config import DataConfig, load
from ffpipe.data import load_data
from ffpipe.data import locate as locate_mod
from ffpipe.data.cifar import read_pickle
from ffpipe.errors import ConfigError, DataError
from tests.helpers.datasets import fake_cifar, fake_idx_dataset, fake_image_folder, pil_pixels


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_batches_read_back_exactly(tmp_path, num_classes):
    expected = fake_cifar(tmp_path, num_classes)
    name = "cifar10" if num_classes == 10 else "cifar100"
    data = load_data(DataConfig(name=name, root=str(tmp_path)), seed=0)
    assert torch.equal(data.train.images, torch.from_numpy(expected["train"][0]))
    assert torch.equal(data.train.labels, torch.from_numpy(expected["train"][1]))
    assert torch.equal(data.test.images, torch.from_numpy(expected["test"][0]))
    assert len(data.train.classes) == num_classes and data.flip
    assert len(data.train) == (100 if num_classes == 10 else 20)


def test_cifar_damaged_batches_are_named(tmp_path):
    fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(DataError, match="has no data_batch_5"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)), seed=0)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DataError, match=f"{batch}.*truncated or damaged"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)), seed=0)
    batch.write_bytes(b"\x80\x02cos\nsystem\nq\x00.")  # a pickle that would run code
    with pytest.raises(DataError, match="refusing to load os.system"):
        read_pickle(batch)


def test_cifar100_folder_read_as_cifar10_says_so(tmp_path):
    fake_cifar(tmp_path, 100)
    with pytest.raises(DataError, match="not found; looked in"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)), seed=0)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_image_folder_with_train_and_test_matches_pil(tmp_path, suffix):
    fake_image_folder(tmp_path, suffix=suffix)
    data = load_data(DataConfig(name="image_folder", root=str(tmp_path)), seed=0)
    assert data.train.classes == ["cat", "dog", "fox"] and len(data.train) == len(data.test) == 18
    first_dog = sorted((tmp_path / "train" / "dog").iterdir())[0]
    assert np.array_equal(data.train.images[6].numpy(), pil_pixels(first_dog))
    assert data.train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6


def test_image_folder_resizes_and_holds_out_a_seeded_test_part(tmp_path):
    fake_image_folder(tmp_path, size=(30, 20), per_class=10, split_dirs=())
    cfg = DataConfig(name="image_folder", root=str(tmp_path), image_size=16, test_fraction=0.3)
    data = load_data(cfg, seed=0)
    assert data.train.shape == (3, 16, 16)
    assert torch.bincount(data.test.labels).tolist() == [3, 3, 3]
    again = load_data(cfg, seed=5)  # the test part depends on data.split_seed only
    assert torch.equal(data.test.images, again.test.images)
    other = load_data(DataConfig(name="image_folder", root=str(tmp_path), image_size=16,
                                 test_fraction=0.3, split_seed=1), seed=0)
    assert not torch.equal(data.test.images, other.test.images)


def test_image_folder_bad_input(tmp_path):
    fake_image_folder(tmp_path, per_class=3)
    cfg = DataConfig(name="image_folder", root=str(tmp_path))
    empty = tmp_path / "test" / "cat"
    for f in empty.iterdir():
        f.unlink()
    with pytest.raises(DataError, match=f"class folder {empty} holds no JPEG/PNG"):
        load_data(cfg, seed=0)
    fake_image_folder(tmp_path / "b", per_class=3, suffix=".jpg")
    bad = tmp_path / "b" / "train" / "dog" / "img_1.jpg"
    whole = bad.read_bytes()
    bad.write_bytes(whole[:200])  # cut inside the header: found while sizes are read
    with pytest.raises(DataError, match=f"cannot read image {bad}.*truncated"):
        load_data(DataConfig(name="image_folder", root=str(tmp_path / "b")), seed=0)
    bad.write_bytes(whole[:len(whole) // 2])  # cut inside the pixels: found while decoding
    with pytest.raises(DataError, match=f"cannot read image {bad}.*truncated"):
        load_data(DataConfig(name="image_folder", root=str(tmp_path / "b"), image_size=20), seed=0)
    Image.new("RGB", (12, 10)).save(tmp_path / "b" / "train" / "dog" / "img_1.jpg")
    with pytest.raises(DataError, match="differ in size.*set data.image_size"):
        load_data(DataConfig(name="image_folder", root=str(tmp_path / "b")), seed=0)


def test_image_folder_needs_a_root():
    with pytest.raises(ConfigError, match="data.root.*must name the image folder"):
        load(None, ["data.name=image_folder"])


def test_imagenette_layout_and_class_names(tmp_path):
    fake_image_folder(tmp_path / "imagenette2-160", classes=("n01440764", "n03888257"), per_class=2,
                      size=(40, 32), split_dirs=("train", "val"), suffix=".JPEG")
    data = load_data(DataConfig(name="imagenette", root=str(tmp_path), image_size=24), seed=0)
    assert data.train.classes == ["tench", "parachute"] and data.train.shape == (3, 24, 24)
    assert len(data.test) == 4


def test_offline_download_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("FFPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    tried = []

    def offline(dataset_class):
        def fail(target, size):
            tried.append((dataset_class, target))
            raise OSError("network is unreachable")
        return fail

    monkeypatch.setattr(locate_mod, "torchvision_download", offline)
    from ffpipe.data import sources
    place = sources.PLACES["cifar10"]
    monkeypatch.setitem(sources.PLACES, "cifar10", locate_mod.Place(
        place.name, place.find, place.how, place.places, offline("CIFAR10")))
    with pytest.raises(DataError, match=r"looked in: .*cache/cifar10.*downloading it into .*"
                                        r"failed \(OSError: network is unreachable\).*cifar.html"):
        load_data(DataConfig(name="cifar10"), seed=0)
    assert tried == [("CIFAR10", tmp_path / "cache" / "cifar10")]
    with pytest.raises(DataError, match="not found; looked in"):
        load_data(DataConfig(name="cifar10", download=False), seed=0)
    assert len(tried) == 1


def test_a_download_that_works_is_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FFPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    from ffpipe.data import sources
    place = sources.PLACES["mnist"]
    # torchvision puts the IDX files into <target>/MNIST/raw
    fake = locate_mod.Place(place.name, place.find, place.how, (),
                            lambda target, size: fake_idx_dataset(target / "MNIST" / "raw"))
    monkeypatch.setitem(sources.PLACES, "mnist", fake)
    assert len(load_data(DataConfig(name="mnist"), seed=0).train) == 40


def test_validation_is_held_out_per_class_before_the_subset(tmp_path):
    fake_idx_dataset(tmp_path, n_train=200)
    data = load_data(DataConfig(name="mnist", root=str(tmp_path), val_fraction=0.25, train_subset=5), seed=3)
    assert torch.bincount(data.val.labels).tolist() == [5] * 10
    assert torch.bincount(data.train.labels).tolist() == [5] * 10
    whole = load_data(DataConfig(name="mnist", root=str(tmp_path)), seed=3)
    assert whole.val is None and not whole.flip  # digits are never mirrored
    train_rows = {bytes(x.numpy()) for x in data.train.images}
    assert not train_rows & {bytes(x.numpy()) for x in data.val.images}
    with pytest.raises(DataError, match="data.val_fraction = 0.99 would hold out all 20"):
        load_data(DataConfig(name="mnist", root=str(tmp_path), val_fraction=0.99), seed=0)


def test_image_size_resizes_raw_sources_once(tmp_path):
    fake_idx_dataset(tmp_path)
    data = load_data(DataConfig(name="mnist", root=str(tmp_path), image_size=32, flip="on"), seed=0)
    assert data.train.shape == (1, 32, 32) and data.test.shape == (1, 32, 32) and data.flip
