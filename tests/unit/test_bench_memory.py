"""`ffpipe bench memory`: the search for the largest batch, and the command end to end on CPU."""
import json
import subprocess
import sys

import pytest

from ffpipe.bench.memory import largest_batch
from tests.helpers import REPO


@pytest.mark.parametrize("limit", [1000, 1024, 33, 5000])
def test_the_search_finds_the_largest_fitting_batch_within_the_resolution(limit):
    tried = []

    def fits(batch):
        tried.append(batch)
        return batch <= limit

    found = largest_batch(fits, 32, 1 << 16, resolution=0.05)
    assert found <= limit and limit - found <= max(1, int(found * 0.05))
    assert len(tried) < 20  # doubling then bisection, not a scan


def test_the_search_says_zero_when_nothing_fits_and_stops_at_the_cap():
    assert largest_batch(lambda b: False, 32, 1024, 0.05) == 0
    assert largest_batch(lambda b: True, 32, 1000, 0.05) == 1000


@pytest.mark.slow
def test_bench_memory_runs_on_cpu_and_writes_every_row(tmp_path):
    out = tmp_path / "mem.json"
    done = subprocess.run([sys.executable, "-m", "ffpipe", "bench", "memory", "--model", "small_cnn",
                           "--shape", "3", "16", "16", "--classes", "10", "--stages", "2", "--start-batch", "8",
                           "--max-batch", "32", "--steps", "1", "--models", "small_cnn", "--batch", "16",
                           "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    runs = [r["run"] for r in result["rows"]]
    assert runs[:2] == ["bp", "sff sequential"] and len(runs) == 4
    assert all(r["largest_batch"] == 32 and r["images_per_s"] > 0 for r in result["rows"])  # CPU: the cap
    assert result["models"][0]["bp"] is True and "2 SFF stages fit" in done.stdout
