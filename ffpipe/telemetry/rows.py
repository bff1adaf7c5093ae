"""Metric rows: one schema for every row a stage logs, written to and read from parquet bytes."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

# One schema for every row, so the files of all stages concatenate into one table. Version 2 added
# the window's shares, the queue's fill, the GPU's busy seconds and the clock time; files of
# version 1 read with those columns empty.
SCHEMA_VERSION = 2
SCHEMA = pa.schema([
    ("phase", pa.string()), ("epoch", pa.int32()), ("step", pa.int64()), ("stage", pa.int32()),
    ("unit", pa.int32()), ("loss", pa.float64()), ("accuracy", pa.float64()), ("lr", pa.float64()),
    ("images_per_s", pa.float64()), ("wait_recv_s", pa.float64()), ("wait_send_s", pa.float64()),
    ("peak_memory_mib", pa.float64()), ("wall_s", pa.float64()),
    ("share_busy", pa.float64()), ("share_waiting_recv", pa.float64()), ("share_waiting_send", pa.float64()),
    ("queue_fill", pa.float64()), ("gpu_busy_s", pa.float64()), ("time", pa.float64()),
], metadata={"ffpipe.schema": str(SCHEMA_VERSION)})


def rows_to_parquet(rows: list[dict]) -> bytes:
    """Rows as one parquet file's bytes, made in memory (the run's Store writes them whole or not
    at all: a process killed while writing leaves the previous file, never an empty one)."""
    columns = {name: [row.get(name) for row in rows] for name in SCHEMA.names}
    out = pa.BufferOutputStream()
    pq.write_table(pa.table(columns, schema=SCHEMA), out)
    return out.getvalue().to_pybytes()


def rows_of_parquet(files: list[bytes]) -> list[dict]:
    """The rows of several parquet files' bytes, in order (columns a file lacks are None)."""
    tables = [pq.read_table(pa.BufferReader(data)) for data in files]
    if not tables:
        return []
    return pa.concat_tables([t.replace_schema_metadata() for t in tables], promote_options="default").to_pylist()
