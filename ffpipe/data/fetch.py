"""`python -m ffpipe.data.fetch NAME`: make sure a dataset is where ffpipe reads it, downloading it
with torchvision into the cache where it is in none of its usual places (launch/get_fashion_mnist.sh
falls back to this where apt-get cannot run). Prints the folder; an error is one line, exit 2."""
from __future__ import annotations

import sys
from pathlib import Path

from ffpipe.data.locate import locate
from ffpipe.data.sources import PLACES
from ffpipe.errors import USER_ERROR_EXIT, FFPipeError


def fetch(name: str) -> Path:
    """The folder holding dataset `name`: found in its usual places, else downloaded into the cache."""
    if name not in PLACES:
        raise FFPipeError(f"no download for dataset {name!r}; datasets that have one: {', '.join(PLACES)}")
    return locate(PLACES[name], "", download=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: python -m ffpipe.data.fetch NAME (one of: {', '.join(PLACES)})", file=sys.stderr)
        return USER_ERROR_EXIT
    try:
        print(fetch(argv[0]))
    except FFPipeError as err:
        print(f"ffpipe: error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
