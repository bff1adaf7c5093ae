"""Faults injected into a running pipeline, seeded, and the report of what it survived.

A fault is injected once the run has gone on past the last one, and it has been survived once
the run has restarted ("resuming at step" on its stderr) and then has a complete checkpoint newer
than the newest it had when hit: the time from the fault to that checkpoint is its "time to
continue". Faults: SIGKILL or SIGSTOP of a stage process; SIGKILL of one then a damaged newest
checkpoint (bytes flipped inside a tensor: the restart must notice and read past it); a lost node
(every process of a Ray node killed).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ffpipe.run.checkpoints import complete_steps, saved
from ffpipe.run.folder import RunFolder

RESTARTED = ("resuming at step", "restarting from the beginning")
# 120 steps of 7 units (the faults are over by about step 30), a checkpoint every 4; a silent
# neighbour is noticed after 8 s
RUN = ["model.name=small_cnn", "model.granularity=layer", "train.epochs=20", "train.eval_every=100",
       "run.checkpoint_every=4", "pipeline.timeout_s=8", "pipeline.max_restarts=20"]


@dataclass
class Fault:
    kind: str               # kill, stop, damage, node
    backend: str
    step: int               # the newest complete step when it was injected
    injected_at: float
    target: str = ""        # which stage process, file or node
    continued_s: float | None = None

    def row(self) -> str:
        took = "not survived" if self.continued_s is None else f"{self.continued_s:.1f} s"
        return f"| {self.kind} | {self.backend} | {self.target} | {self.step} | {took} |"


@dataclass
class Chaos:
    run_dir: Path
    proc: subprocess.Popen  # with stderr=PIPE: read here, line by line
    num_units: int
    backend: str
    seed: int
    faults: list[Fault] = field(default_factory=list)

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append((time.time(), line))

    def newest_complete(self) -> int:
        if not (self.run_dir / "checkpoints").is_dir():
            return -1
        return max(complete_steps(saved(RunFolder(self.run_dir)), self.num_units), default=-1)

    def _wait(self, done: Callable[[], bool], what: str, timeout: float = 240) -> None:
        t0 = time.time()
        while not done():
            assert self.proc.poll() is None, f"the run ended while waiting for {what}:\n{self.stderr()[-4000:]}"
            assert time.time() - t0 < timeout, f"no {what} within {timeout} s"
            time.sleep(0.05)

    def inject(self, kind: str, pids: Callable[[], list[int]], node: Callable[[], str] | None = None) -> Fault:
        """One fault, once the run is past the last one; returns once the run has gone on past it."""
        last = self.faults[-1].step if self.faults else -1
        self._wait(lambda: self.newest_complete() > last, f"a complete step beyond {last}")
        fault = Fault(kind, self.backend, self.newest_complete(), time.time())
        if kind == "node":
            fault.target = f"node {node()}"
        else:
            victims: list[int] = []

            def found() -> bool:  # between a restart's stop and start no stage is alive: wait for one
                victims[:] = pids()
                return bool(victims)

            self._wait(found, "a live stage process to hit", timeout=120)
            victim = self.rng.choice(sorted(victims))
            os.kill(victim, signal.SIGSTOP if kind == "stop" else signal.SIGKILL)
            fault.target = f"{'SIGSTOP' if kind == 'stop' else 'SIGKILL'} pid {victim}"
            if kind == "damage":  # after the kill, no newer step can complete: the restart reads this one
                fault.target += f", then {damage_newest(self.run_dir, self.rng)}"
        self.faults.append(fault)
        self._wait(lambda: any(t > fault.injected_at and any(r in line for r in RESTARTED) for t, line in self.lines),
                   "a restart")
        self._wait(lambda: self.newest_complete() > fault.step, f"a complete step beyond {fault.step}")
        fault.continued_s = time.time() - fault.injected_at
        return fault

    def finish(self, timeout: float = 600) -> str:
        """Wait for the run to end; its whole stderr."""
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return self.stderr()

    def stderr(self) -> str:
        return "".join(line for _, line in self.lines)

    def survived(self, err: str, reference: Path) -> dict:
        """The run ended well, with the parameters of the uninterrupted `reference`, one restart
        per fault and no temporary file left; the report beside the run. Returns its summary."""
        import json

        from tests.helpers.runs import assert_same_parameters, summary

        (self.run_dir.parent / "chaos.md").write_text(self.report() + "\n")
        assert self.proc.returncode == 0, err[-4000:]
        assert_same_parameters(reference, self.run_dir)
        result = summary(self.run_dir)
        attempts = {f["attempt"] for f in result["restarts"] if not f.get("layout")}
        assert result["completed"] and len(attempts) == len(self.faults), json.dumps(result["restarts"], indent=1)
        assert not list(self.run_dir.rglob("*.tmp-*")) and "Traceback" not in err
        return result

    def report(self) -> str:
        head = "| fault | backend | target | newest complete step when hit | time to continue |\n|---|---|---|---|---|"
        return "\n".join([head, *(f.row() for f in self.faults)])


def damage_newest(run_dir: Path, rng: random.Random) -> str:
    """Flip bytes inside a tensor of one file of the newest complete step."""
    files = saved(RunFolder(run_dir))
    complete = complete_steps(files, max(f.last for f in files) + 1)
    victim = rng.choice(complete[max(complete)])
    flip_tensor_bytes(run_dir / victim.name)
    return f"damaged {victim.name}"


def flip_tensor_bytes(path: Path, count: int = 64) -> None:
    """XOR `count` bytes in the middle of the largest tensor record of a checkpoint: the archive
    still opens and torch still loads it; only the record's CRC tells."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    at = record.header_offset  # the local header: its name and extra field lengths at 26 and 28
    start = at + 30 + int.from_bytes(data[at + 26:at + 28], "little") + int.from_bytes(data[at + 28:at + 30], "little")
    start += record.file_size // 2 - min(count, record.file_size) // 2
    for i in range(start, start + min(count, record.file_size)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
