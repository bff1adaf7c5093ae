"""Image folders: one subfolder of JPEG/PNG files per class (Imagenette, Imagewoof, a user's own).

Splits: root/train with root/test (or root/val) next to it; without a test folder, a seeded share
of every class (data.test_fraction, data.split_seed) is held out as the test split.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ffpipe.data.arrays import ArraySet
from ffpipe.data.decode import common_size, decode_all, image_sizes
from ffpipe.data.subset import held_out_per_class
from ffpipe.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
# Imagenette and Imagewoof name their class folders by WordNet id.
WNID_NAMES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
    "n03888257": "parachute",
    "n02086240": "Shih-Tzu", "n02087394": "Rhodesian ridgeback", "n02088364": "beagle",
    "n02089973": "English foxhound", "n02093754": "Border terrier", "n02096294": "Australian terrier",
    "n02099601": "golden retriever", "n02105641": "Old English sheepdog", "n02111889": "Samoyed",
    "n02115641": "dingo",
}


@dataclass
class FileSplit:
    """A split as files not yet decoded: what `ffpipe data prepare` stores as encoded bytes."""
    files: list[Path]
    labels: torch.Tensor  # int64, one per file
    classes: list[str]
    root: Path

    def names(self) -> list[str]:
        return [str(f) for f in self.files]

    def relative(self) -> list[str]:
        return [f.relative_to(self.root).as_posix() for f in self.files]

    def take(self, index: torch.Tensor) -> "FileSplit":
        return FileSplit([self.files[i] for i in index.tolist()], self.labels[index], self.classes,
                         self.root)

    # What `ffpipe data prepare` asks of an encoded split (ffpipe/data/encoded.py).
    def read(self, rows: np.ndarray) -> list[bytes]:
        """The encoded bytes of these rows, in this order."""
        return [_on_file(Path.read_bytes, self.files[i]) for i in rows.tolist()]

    def nbytes(self) -> np.ndarray:
        return np.array([_on_file(Path.stat, f).st_size for f in self.files], dtype=np.int64)

    def sizes(self, threads: int) -> np.ndarray:
        """int32 N x 2: (height, width) of every image, from its header; a file that does not
        open as an image is refused with its path."""
        return image_sizes(self.files, self.names(), threads)

    def pieces(self) -> np.ndarray:
        """The units the input can be read in at random: every file on its own."""
        return np.arange(len(self.files))


def _on_file(op, path: Path):
    """op(path) (read it, stat it), with an error that names the file."""
    try:
        return op(path)
    except OSError as err:
        raise DataError(f"cannot read image {path}: {err}") from None


def class_folders(folder: Path) -> list[str]:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{folder} has no class folders; an image folder holds one subfolder of "
                        "JPEG/PNG files per class")
    return names


def list_split(folder: Path, folders: list[str], root: Path) -> FileSplit:
    files, labels = [], []
    for label, name in enumerate(folders):
        class_dir = folder / name
        if not class_dir.is_dir():
            raise DataError(f"{folder} has no folder '{name}', but the training split has that class; "
                            "every split needs the same class folders")
        found = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"class folder {class_dir} holds no JPEG/PNG images; add images or "
                            "remove the folder")
        files += found
        labels += [label] * len(found)
    return FileSplit(files, torch.tensor(labels, dtype=torch.int64), folders, root)


def folder_splits(root: Path, test_fraction: float, split_seed: int) -> tuple[FileSplit, FileSplit]:
    """(train, test) files of an image folder, by the split rule of the module docstring."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; set data.root to a folder with one "
                        "subfolder of images per class (or train/ and test/ folders of those)")
    train_dir = root / "train" if (root / "train").is_dir() else root
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    folders = class_folders(train_dir)
    train = list_split(train_dir, folders, root)
    if test_dir is not None:
        extra = sorted(set(class_folders(test_dir)) - set(folders))
        if extra:
            raise DataError(f"{test_dir} has class folders the training split lacks: {extra}")
        return train, list_split(test_dir, folders, root)
    kept, held = held_out_per_class(train.labels, folders, test_fraction, split_seed,
                                    "data.test_fraction")
    return train.take(kept), train.take(held)


def readable_classes(folders: list[str]) -> list[str]:
    return [WNID_NAMES.get(f, f) for f in folders]


def find_imagenette(folder: Path) -> Path | None:
    """`folder` if it holds train/ and val/, else its imagenette2* / imagewoof2* child that does."""
    children = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    for candidate in [folder] + children:
        if (candidate / "train").is_dir() and (candidate / "val").is_dir():
            return candidate
    return None


def decode_split(split: FileSplit, size: int, threads: int) -> ArraySet:
    images = decode_all(split.files, split.names(), size, threads)
    return ArraySet(torch.from_numpy(images), split.labels, readable_classes(split.classes))


def read_image_folder(root: Path, size: int, test_fraction: float, split_seed: int,
                      threads: int = 0) -> tuple[ArraySet, ArraySet]:
    """Both splits decoded to `size` x `size` (0: the one size every image already has)."""
    train, test = folder_splits(root, test_fraction, split_seed)
    if size == 0:
        size = common_size(train.files + test.files, train.names() + test.names(), threads)
    return (decode_split(train, size, threads).check(f"image folder {root} (train)"),
            decode_split(test, size, threads).check(f"image folder {root} (test)"))
