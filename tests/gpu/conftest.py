"""GPU tier: every test here needs CUDA and skips cleanly without it. Run on a GPU machine with
`pytest tests/gpu -n 0`; the figures they print are recorded in docs/benchmarks.md."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)
