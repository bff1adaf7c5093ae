"""Stage failures: naming them, recording them in the run folder, and deciding whether a run
restarts from its checkpoints.

A failure is recorded once per stage that saw it, in failures.jsonl: {time, attempt, stage, step,
cause, secondary}. A stage that only lost its neighbour (or waited on it past the deadline) is a
secondary report; the root cause of an attempt is its first primary report, else its first one.
A run restarts up to pipeline.max_restarts times, unless the same stage failed at the same step
for the same reason twice in a row: that failure is deterministic and another attempt would
only repeat it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ffpipe.errors import ConfigError, DataError, NeighbourError, PipelineError
from ffpipe.run.folder import RunFolder


class StageFailed(PipelineError):
    """A stage's loop ended with an exception; says which stage, at which step, and why.
    (Plain fields, so it crosses process boundaries: Ray pickles it from actor to driver.)"""

    def __init__(self, stage_id: int | None, step: int | None, cause: str, secondary: bool = False,
                 user_error: bool = False):
        super().__init__(stage_id, step, cause, secondary, user_error)
        self.stage_id, self.step, self.cause = stage_id, step, cause
        self.secondary, self.user_error = secondary, user_error

    @classmethod
    def of(cls, stage_id: int, step: int, err: BaseException) -> "StageFailed":
        # Bad config or data fails every attempt the same way: not worth a restart.
        user = isinstance(err, (ConfigError, DataError))
        return cls(stage_id, step, describe(err), isinstance(err, NeighbourError), user)

    def __str__(self) -> str:
        at = f" at step {self.step}" if self.step is not None else ""
        return f"stage {self.stage_id} failed{at}: {self.cause}"


def describe(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    if isinstance(err, StageFailed):
        return err.cause
    text = str(err).strip().splitlines()[0][:400] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@dataclass(frozen=True)
class Attempt:
    """Which attempt of a run this process belongs to (0: the first) and how many may follow."""
    number: int
    max_restarts: int

    @classmethod
    def from_env(cls, max_restarts: int) -> "Attempt":
        """Under torchrun: launch/torchrun.sh counts attempts in FFPIPE_ATTEMPT; torchrun's own
        --max-restarts counts them in TORCHELASTIC_RESTART_COUNT."""
        number = max(int(os.environ.get("FFPIPE_ATTEMPT", 0)),
                     int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)))
        return cls(number, max_restarts)


def record(folder: RunFolder, failure: StageFailed, attempt: int) -> dict:
    return folder.record_failure(failure.stage_id, failure.step, failure.cause, attempt, failure.secondary)


def root_cause(failures: list[dict], attempt: int) -> dict | None:
    mine = [f for f in failures if f["attempt"] == attempt]
    primary = [f for f in mine if not f.get("secondary")]
    return (primary or mine or [None])[0]


def restart_verdict(failures: list[dict], attempt: int, max_restarts: int) -> str | None:
    """None when the run should restart after `attempt` failed; otherwise why it should not."""
    if attempt >= max_restarts:
        return (f"not restarting: pipeline.max_restarts = {max_restarts} restart(s) used"
                if max_restarts else "pipeline.max_restarts = 0: no automatic restart")
    now, before = root_cause(failures, attempt), root_cause(failures, attempt - 1)
    same = ("stage", "step", "cause")
    if now and before and all(now.get(k) == before.get(k) for k in same) and now.get("step") is not None:
        return (f"not restarting: stage {now['stage']} failed at step {now['step']} for the same "
                "reason as in the attempt before, so another attempt would fail the same way")
    return None
