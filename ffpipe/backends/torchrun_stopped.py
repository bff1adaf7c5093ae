"""Stopped stage processes that torchrun's agent has asked to end are let run, so they end.

When a stage fails, torchrun's agent (in this process, launch/torchrun.sh) sends SIGTERM to every
other stage process and waits up to 30 s for them to exit before SIGKILL. A stopped process
(SIGSTOP, a job-control stop) keeps SIGTERM pending and cannot exit, so a stopped stage cost
every recovery those whole 30 s (the chaos test's stopped stage: 44 s to continue, 15 s with
this). In torch 2.14 TORCH_ELASTIC_SHUTDOWN_TIMEOUT does not shorten it: the agent's stop after a
failed worker (`_stop_workers`) waits its fixed 30 s before the configured shutdown runs.

This watcher sends SIGCONT to a child of this process that is stopped *with SIGTERM pending*:
the agent has already decided it ends, SIGCONT only lets the SIGTERM act now (a stage process
keeps nothing to flush: its checkpoints are written whole or not at all). A stopped process
with nothing pending (paused on purpose) is left alone. Linux only (/proc); elsewhere a no-op.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from ffpipe.backends import ray_nodes

PROC = Path("/proc")
POLL_S = 0.25


def _pending(pid_dir: Path) -> int:
    """The process's pending signals (the process-wide and the thread's set), as a bit mask."""
    try:
        lines = (pid_dir / "status").read_text().splitlines()
    except OSError:
        return 0
    return _mask(lines, "ShdPnd:") | _mask(lines, "SigPnd:")


def _mask(lines: list[str], key: str) -> int:
    return next((int(line.split()[1], 16) for line in lines if line.startswith(key)), 0)


def children(parent: int) -> list[int]:
    """`parent`'s child processes: from its threads' `children` lists where the kernel keeps them
    (one small read per thread), else by the parent pid of every process."""
    lists = list(PROC.glob(f"{parent}/task/*/children"))
    if not lists:
        return sorted(_with_parent(parent))
    pids = set()
    for path in lists:
        try:
            pids.update(int(pid) for pid in path.read_text().split())
        except OSError:  # the thread ended
            pass
    return sorted(pids)


def _with_parent(parent: int) -> set[int]:
    """Every process whose parent is `parent`, by ray_nodes' reading of /proc/<pid>/stat."""
    found = set()
    for pid in ray_nodes.pids():
        try:
            if ray_nodes.parent(pid) == parent:
                found.add(pid)
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    return found


def stopped_with_term_pending(parent: int) -> list[int]:
    """Children of `parent` that are stopped (state T) while asked to end (SIGTERM pending)."""
    term = 1 << (signal.SIGTERM - 1)
    found = []
    for pid in children(parent):
        try:
            stopped = ray_nodes.state(pid) == "T"
        except (OSError, IndexError):  # gone meanwhile
            continue
        if stopped and _pending(PROC / str(pid)) & term:
            found.append(pid)
    return found


class StoppedChildrenWaker:
    """A daemon thread, while in a `with` block: SIGCONT to this process's stopped children
    that have SIGTERM pending."""

    def __init__(self, poll_s: float = POLL_S):
        self.poll_s = poll_s
        self.woken: list[int] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ffpipe-stopped-children", daemon=True)

    def __enter__(self) -> StoppedChildrenWaker:
        if PROC.is_dir():
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        me = os.getpid()
        while not self._done.wait(self.poll_s):
            for pid in stopped_with_term_pending(me):
                try:
                    os.kill(pid, signal.SIGCONT)
                    self.woken.append(pid)
                except ProcessLookupError:
                    pass
