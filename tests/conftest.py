"""pytest's set-up for every tier: one torch thread per xdist worker, and the tier of each test
as a marker taken from its folder (tests/unit -> `unit`; `pytest -m "not ray"` skips a tier).
Shared helpers live in tests/helpers, importable from any tier."""
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "multiprocess", "ray", "gpu")

# pytest-xdist runs one worker per core: one intra-op thread each avoids oversubscription.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
