"""Stage failures: naming them, recording them in the run folder, and deciding whether a run
restarts from its checkpoints.

A failure is recorded once per stage that saw it, in failures.jsonl: {time, attempt, stage, step,
cause, secondary}, and silent_rank where a neighbour sent nothing for pipeline.timeout_s. A stage
that only lost its neighbour (or waited on it past the deadline) is a secondary report; the root
cause of an attempt is its first primary report, else its first one. A run restarts up to
pipeline.max_restarts times per session (a start, or a --resume), unless the same stage failed
at the same step for the same reason twice in a row: that failure is deterministic and another
attempt would only repeat it. Attempt numbers go on across sessions, so an attempt's records are
its own.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ffpipe.errors import CheckpointError, ConfigError, DataError, NeighbourError, PipelineError, StorageError
from ffpipe.run.folder import RunFolder


class StageFailed(PipelineError):
    """A stage's loop ended with an exception; says which stage, at which step, and why.
    (Plain fields, so it crosses process boundaries: Ray pickles it from actor to driver.)"""

    def __init__(self, stage_id: int | None, step: int | None, cause: str, secondary: bool = False,
                 user_error: bool = False, silent_rank: int | None = None):
        super().__init__(stage_id, step, cause, secondary, user_error, silent_rank)
        self.stage_id, self.step, self.cause = stage_id, step, cause
        self.secondary, self.user_error, self.silent_rank = secondary, user_error, silent_rank

    @classmethod
    def of(cls, stage_id: int, step: int, err: BaseException, detail: str = "") -> "StageFailed":
        """`detail`: said after the cause (where the stage's flight recorder left its stacks)."""
        # Bad config, data or checkpoints, or a full disk, fail every attempt the same way: not
        # worth a restart.
        user = isinstance(err, (ConfigError, DataError, CheckpointError, StorageError))
        return cls(stage_id, step, describe(err) + detail, isinstance(err, NeighbourError), user,
                   getattr(err, "silent_rank", None))

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
    """One attempt of a run: its number in failures.jsonl and that of its session's first attempt.
    A session (a new run, or one --resume of it) numbers its attempts on from the last one the run
    folder records, so a record of an earlier session is never taken for one of this session's."""
    number: int = 0
    first: int = 0

    @property
    def restarts(self) -> int:
        """Automatic restarts of this session before this attempt."""
        return self.number - self.first

    def next(self) -> "Attempt":
        return Attempt(self.number + 1, self.first)

    @classmethod
    def first_of(cls, folder: RunFolder | None) -> "Attempt":
        """A session's first attempt on `folder` (None: a new run)."""
        recorded = [f["attempt"] for f in folder.failures()] if folder is not None else []
        number = max(recorded, default=-1) + 1
        return cls(number, number)


def restarts_from_env() -> int:
    """Under torchrun: launch/torchrun.sh counts restarts in FFPIPE_ATTEMPT; torchrun's own
    --max-restarts counts them in TORCHELASTIC_RESTART_COUNT."""
    return max(int(os.environ.get("FFPIPE_ATTEMPT", 0)), int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)))


def record(folder: RunFolder, failure: StageFailed, attempt: int) -> dict:
    return folder.record_failure(failure.stage_id, failure.step, failure.cause, attempt, failure.secondary,
                                 silent_rank=failure.silent_rank)


def root_cause(failures: list[dict], attempt: int) -> dict | None:
    mine = [f for f in failures if f["attempt"] == attempt and not f.get("layout")]
    primary = [f for f in mine if not f.get("secondary")]
    return (primary or mine or [None])[0]


def restart_verdict(failures: list[dict], attempt: Attempt, max_restarts: int) -> str | None:
    """None when the run should restart after `attempt` failed; otherwise why it should not."""
    if attempt.restarts >= max_restarts:
        return (f"not restarting: pipeline.max_restarts = {max_restarts} restart(s) used"
                if max_restarts else "pipeline.max_restarts = 0: no automatic restart")
    now = root_cause(failures, attempt.number)
    before = root_cause(failures, attempt.number - 1) if attempt.restarts else None  # this session's only
    same = ("stage", "step", "cause")
    if now and before and all(now.get(k) == before.get(k) for k in same) and now.get("step") is not None:
        return (f"not restarting: stage {now['stage']} failed at step {now['step']} for the same "
                "reason as in the attempt before, so another attempt would fail the same way")
    return None
