"""Finding a dataset's files: data.root if set, else the usual places, else a torchvision download
into the cache (only when data.root is empty, so an explicit folder is never filled behind the
user's back). Offline, the error says where it looked and how to get the data."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ffpipe.errors import DataError

Finder = Callable[[Path], "Path | None"]  # a candidate folder -> the folder that holds the files


def cache_dir() -> Path:
    """Where downloads go: $FFPIPE_CACHE, else ~/.cache/ffpipe."""
    return Path(os.environ.get("FFPIPE_CACHE") or "~/.cache/ffpipe").expanduser()


@dataclass(frozen=True)
class Place:
    """How to find one dataset: its usual folders, how a person gets it, and how to download it."""
    name: str
    find: Finder
    how: str
    places: tuple[str, ...] = ()
    download: Callable[[Path, int], None] | None = field(default=None, compare=False)

    def candidates(self) -> list[Path]:
        usual = [cache_dir() / self.name, Path("data") / self.name]
        return usual + [Path(p).expanduser() for p in self.places]


def locate(place: Place, root: str, image_size: int = 0, download: bool = True) -> Path:
    """The folder holding `place`'s files; downloads into the cache when allowed and possible."""
    folders = [Path(root).expanduser()] if root else place.candidates()
    for folder in folders:
        found = place.find(folder) if folder.is_dir() else None
        if found is not None:
            return found
    looked = ", ".join(str(f) for f in folders)
    if root or place.download is None or not download:
        raise DataError(f"dataset '{place.name}' not found; looked in: {looked}. Get it: "
                        f"{place.how}, or set data.root to the folder that holds the files")
    target = cache_dir() / place.name
    try:
        place.download(target, image_size)
    except Exception as err:  # offline, a proxy, a full disk: all end the same way for the user
        raise DataError(f"dataset '{place.name}' not found; looked in: {looked}; downloading it into "
                        f"{target} through torchvision failed ({type(err).__name__}: {err}). "
                        f"Get it: {place.how}, or set data.root to the folder that holds the files"
                        ) from None
    found = place.find(target)
    if found is None:
        raise DataError(f"torchvision downloaded '{place.name}' into {target} but its files are not "
                        "where expected; delete the folder and try again")
    return found


def torchvision_download(dataset_class: str, **kwargs) -> Callable[[Path, int], None]:
    """A downloader through torchvision.datasets.<dataset_class>(target, download=True, **kwargs)."""
    def download(target: Path, image_size: int) -> None:
        import torchvision.datasets

        target.mkdir(parents=True, exist_ok=True)
        getattr(torchvision.datasets, dataset_class)(str(target), download=True, **kwargs)
    return download


def imagenette_download(target: Path, image_size: int) -> None:
    """The smallest of Imagenette's three archives whose shorter side is at least the image size."""
    import torchvision.datasets

    variant = "160px" if image_size <= 160 else "320px" if image_size <= 320 else "full"
    target.mkdir(parents=True, exist_ok=True)
    torchvision.datasets.Imagenette(str(target), split="train", size=variant, download=True)
