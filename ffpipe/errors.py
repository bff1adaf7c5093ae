"""Errors meant for users: each names what is wrong and how to fix it.

The CLI prints these as one line and exits with status 2 (USER_ERROR_EXIT); anything else is a
bug and keeps its traceback.
"""
import importlib
import importlib.util
import os
import sys
import time

USER_ERROR_EXIT = 2  # the exit status of input a user can fix: launch/torchrun.sh does not restart it
# How long a torchrun rank other than 0 waits to be stopped before it says its error itself.
RANK_0_SPEAKS_S = 10.0


def say_error(message: str) -> None:
    """Print a user error once per torchrun job, not once per rank. Every rank gets the same input
    and fails alike, so rank 0 says it. Another rank does not leave at once (torchrun would then
    stop rank 0, perhaps before it has spoken): it waits for torchrun to stop it, as torchrun does
    when rank 0 exits, and says the error itself only if still running: then it was its own."""
    if os.environ.get("TORCHELASTIC_RUN_ID") and os.environ.get("RANK", "0") != "0":
        time.sleep(RANK_0_SPEAKS_S)
    print(message, file=sys.stderr, flush=True)


class FFPipeError(ValueError):
    """Base class of every error caused by input a user can fix (config, data, files, arguments)."""


def optional_module(module: str, extra: str, needed_by: str):
    """Import a module of one of ffpipe's extras (pyproject.toml), or say what to install: the
    core install leaves Ray, matplotlib and the loggers out."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module.split(".")[0]:  # installed, but broken inside: not ours to explain
            raise
        raise _not_installed(module, extra, needed_by) from None


def require_installed(module: str, extra: str, needed_by: str) -> None:
    """Like optional_module, without importing it: Ray must first be imported where ffpipe has set
    its environment (ffpipe/backends/ray_cluster.py), never before."""
    if importlib.util.find_spec(module) is None:
        raise _not_installed(module, extra, needed_by)


def _not_installed(module: str, extra: str, needed_by: str) -> FFPipeError:
    return FFPipeError(f"{needed_by} needs {module.split('.')[0]}, which is not installed: "
                       f"pip install 'ffpipe[{extra}]'")


class ConfigError(FFPipeError):
    """A config key is unknown, has the wrong type or an impossible value."""


class DataError(FFPipeError):
    """A dataset is missing, truncated, corrupted or disagrees with the model."""


class StorageError(FFPipeError):
    """The run folder cannot be written (a full disk, no permission); nothing saved is lost."""


class CheckpointError(FFPipeError):
    """A checkpoint that does not fit the run: another model's, or the run folder's is incomplete."""


class TrainingError(FFPipeError):
    """Training cannot go on (for example a unit's loss became non-finite)."""


class PipelineError(FFPipeError):
    """A pipeline stage failed, timed out or disagrees with its neighbours."""


class NeighbourError(PipelineError):
    """This stage is fine, a neighbour is not: it died, went silent or its data never arrived.
    `silent_rank`: the neighbour's rank where it sent nothing for pipeline.timeout_s (recorded in
    failures.jsonl, where the torchrun launcher tells a stopped process from a dead one)."""

    def __init__(self, message: str, silent_rank: int | None = None):
        super().__init__(message)
        self.silent_rank = silent_rank

    def __reduce__(self):  # keeps silent_rank across processes (Ray pickles errors)
        return type(self), (str(self), self.silent_rank)
