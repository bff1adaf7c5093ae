"""The run store on a local folder and on a filesystem reached through pyarrow (its in-memory
`mock://` filesystem stands in for an object store): whole-or-absent writes, appends, listing."""
from __future__ import annotations

import uuid

import pytest

from ffpipe.errors import FFPipeError
from ffpipe.run.store import Store, join


@pytest.fixture(params=["local", "pyarrow"])
def store(request, tmp_path) -> Store:
    return Store(tmp_path / "run" if request.param == "local" else f"mock:///{uuid.uuid4().hex}/run")


def test_files_are_written_read_listed_appended_and_deleted(store):
    assert not store.exists("summary.json") and store.list("checkpoints/stage-0") == []
    store.write_text("summary.json", '{"a": 1}')
    for step in (2, 1):
        store.write_bytes(f"checkpoints/stage-0/step-{step}.pt", bytes([step]) * 3)
    store.append_line("history.jsonl", '{"step": 1}')
    store.append_line("history.jsonl", '{"step": 2}\n')
    assert store.read_text("summary.json") == '{"a": 1}'
    assert store.list("checkpoints/stage-0") == ["step-1.pt", "step-2.pt"]
    assert store.read_bytes("checkpoints/stage-0/step-2.pt") == b"\x02\x02\x02"
    assert store.read_text("history.jsonl").splitlines() == ['{"step": 1}', '{"step": 2}']
    store.delete("checkpoints/stage-0/step-1.pt")
    store.delete("checkpoints/stage-0/step-9.pt")  # missing: nothing to do
    assert store.list("checkpoints/stage-0") == ["step-2.pt"]


def test_a_write_that_fails_midway_leaves_the_previous_file_and_no_temporary(store):
    store.write_bytes("metrics/stage-0.parquet", b"old")

    def fails_midway(f):
        f.write(b"half of the n")
        raise KeyboardInterrupt  # a kill while writing

    with pytest.raises(KeyboardInterrupt):
        store.write("metrics/stage-0.parquet", fails_midway)
    assert store.read_bytes("metrics/stage-0.parquet") == b"old"
    assert store.list("metrics") == ["stage-0.parquet"]


class _NoAppend:
    """An object store: everything but appends."""

    def __init__(self, filesystem):
        self._fs = filesystem

    def open_append_stream(self, path):
        raise NotImplementedError("append is not supported")

    def __getattr__(self, name):
        return getattr(self._fs, name)


def test_on_a_store_without_appends_a_line_is_added_by_rewriting_the_file():
    store = Store(f"mock:///{uuid.uuid4().hex}/run")
    store._fs = _NoAppend(store._fs)
    for step in range(3):
        store.append_line("failures.jsonl", f'{{"step": {step}}}')
    assert store.read_text("failures.jsonl").splitlines() == [f'{{"step": {s}}}' for s in range(3)]


def test_a_location_pyarrow_cannot_open_is_named_with_the_schemes_that_work():
    with pytest.raises(FFPipeError, match=r"cannot open run storage 'nosuch://bucket/runs'.*s3://bucket/path"):
        Store("nosuch://bucket/runs")


def test_names_join_onto_paths_and_uris():
    assert join("s3://bucket/runs/", "exp1") == "s3://bucket/runs/exp1"
    assert join("runs", "exp1") == "runs/exp1"
