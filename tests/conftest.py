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
    # xdist hands out work in collection order, and an xdist_group is one piece of work that one
    # worker runs from start to end: the Ray tests (one group, a third of the suite's time) go
    # first, so that the other worker is not left idle while they finish last.
    items.sort(key=lambda item: not any(m.args[:1] == ("ray",) for m in item.iter_markers("xdist_group")))
