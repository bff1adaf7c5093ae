import pytest
import torch

from ffpipe.config import DataConfig
from ffpipe.data import DeviceLoader, load_data
from ffpipe.data.arrays import ArraySet
from ffpipe.data.idx import read_idx
from ffpipe.data.loader import channel_stats, crop_and_flip
from ffpipe.data.subset import per_class_subset
from ffpipe.errors import DataError
from tests.helpers import needs_fashion
from tests.helpers.datasets import fake_idx_dataset


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_read_back_exactly(tmp_path, compress):
    arrays = fake_idx_dataset(tmp_path / "fm", compress=compress)
    data = load_data(DataConfig(name="mnist", root=str(tmp_path / "fm")), seed=0)
    assert torch.equal(data.train.images[:, 0], torch.from_numpy(arrays["train"][0]))
    assert torch.equal(data.test.labels, torch.from_numpy(arrays["t10k"][1]).long())
    assert data.info.in_shape == (1, 28, 28) and data.info.num_classes == 10


def test_truncated_and_damaged_files_are_named(tmp_path):
    fake_idx_dataset(tmp_path / "fm", compress=False)
    path = tmp_path / "fm" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=f"{path}.*truncated"):
        read_idx(path)
    gz = tmp_path / "x-idx1-ubyte.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match=str(gz)):
        read_idx(gz)


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=f"looked in: {tmp_path}.*set data.root"):
        load_data(DataConfig(name="fashion_mnist", root=str(tmp_path)), seed=0)


def test_labels_out_of_range_are_refused():
    with pytest.raises(DataError, match="labels run from 0 to 12, but there are 10 classes"):
        ArraySet(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 12, 1]),
                 [str(i) for i in range(10)]).check("x")


def test_subset_is_per_class_seeded_and_checked():
    data = ArraySet(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), torch.arange(100) % 4, list("abcd"))
    a, b = per_class_subset(data, 5, seed=3), per_class_subset(data, 5, seed=3)
    assert torch.equal(a.images, b.images) and torch.bincount(a.labels).tolist() == [5] * 4
    assert not torch.equal(a.images, per_class_subset(data, 5, seed=4).images)
    assert torch.bincount(per_class_subset(data, 0.2, seed=0).labels).tolist() == [5] * 4
    with pytest.raises(DataError, match="class 0 \\('a'\\) has only 25"):
        per_class_subset(data, 26, seed=0)


def test_crop_and_flip_moves_pixels_as_asked():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    same = crop_and_flip(x, torch.tensor([[1, 1]]), torch.tensor([False]), pad=1)
    assert torch.equal(same, x)
    flipped = crop_and_flip(x, torch.tensor([[1, 1]]), torch.tensor([True]), pad=1)
    assert torch.equal(flipped, x.flip(3))
    shifted = crop_and_flip(x, torch.tensor([[0, 1]]), torch.tensor([False]), pad=1)
    assert torch.equal(shifted[0, 0, 0], torch.zeros(4)) and torch.equal(shifted[0, 0, 1], x[0, 0, 0])


def test_loader_epochs_are_deterministic_and_resumable():
    data = ArraySet(torch.randint(0, 255, (50, 1, 8, 8), dtype=torch.uint8), torch.arange(50) % 5, list("abcde"))
    mean, std = channel_stats(data.images)
    make = lambda: DeviceLoader(data, 8, torch.device("cpu"), mean, std, train=True, seed=1,  # noqa: E731
                                augment=True, flip=True)
    first = list(make().batches(epoch=2))
    assert len(first) == 6 and all(len(y) == 8 for _, y in first)
    resumed = list(make().batches(epoch=2, start=4))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first[4:], resumed))
    other_epoch = list(make().batches(epoch=3))
    assert not torch.equal(first[0][1], other_epoch[0][1])
    test = DeviceLoader(data, 16, torch.device("cpu"), mean, std, train=False)
    assert [len(y) for _, y in test.batches(0)] == [16, 16, 16, 2]


@needs_fashion
def test_real_fashion_mnist_counts_and_balance():
    data = load_data(DataConfig(name="fashion_mnist"), seed=0)
    assert len(data.train) == 60000 and len(data.test) == 10000
    assert torch.bincount(data.train.labels).tolist() == [6000] * 10
    assert 0.25 < data.mean[0] < 0.32 and 0.33 < data.std[0] < 0.37
    assert data.train.classes[0] == "T-shirt/top" and data.train.classes[9] == "Ankle boot"
    assert data.train.images.dtype == torch.uint8 and data.train.images.max() == 255
