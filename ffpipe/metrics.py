"""Per-stage metrics: rows kept in memory and written with pyarrow; peak memory; timing."""
from __future__ import annotations

import resource
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import torch

# One schema for every row, so the files of all stages concatenate into one table.
SCHEMA = pa.schema([
    ("phase", pa.string()), ("epoch", pa.int32()), ("step", pa.int64()), ("stage", pa.int32()),
    ("unit", pa.int32()), ("loss", pa.float64()), ("accuracy", pa.float64()), ("lr", pa.float64()),
    ("images_per_s", pa.float64()), ("wait_recv_s", pa.float64()), ("wait_send_s", pa.float64()),
    ("peak_memory_mib", pa.float64()), ("wall_s", pa.float64()),
])


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated on `device`, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def rows_to_parquet(rows: list[dict]) -> bytes:
    """Rows as one parquet file's bytes, made in memory (the run's Store writes them whole or not
    at all: a process killed while writing leaves the previous file, never an empty one)."""
    columns = {name: [row.get(name) for row in rows] for name in SCHEMA.names}
    out = pa.BufferOutputStream()
    pq.write_table(pa.table(columns, schema=SCHEMA), out)
    return out.getvalue().to_pybytes()


def rows_of_parquet(files: list[bytes]) -> list[dict]:
    """The rows of several parquet files' bytes, in order."""
    tables = [pq.read_table(pa.BufferReader(data)) for data in files]
    return pa.concat_tables(tables).to_pylist() if tables else []


class Stopwatch:
    """Sums the seconds spent inside `with watch:` blocks (waiting on a neighbour, say)."""

    def __init__(self):
        self.total = 0.0

    def __enter__(self):
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.total += time.perf_counter() - self._t0
        return False
