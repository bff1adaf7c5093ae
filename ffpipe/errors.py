"""Errors meant for users: each names what is wrong and how to fix it.

The CLI prints these as one line and exits with status 2 (USER_ERROR_EXIT); anything else is a
bug and keeps its traceback.
"""

USER_ERROR_EXIT = 2  # the exit status of input a user can fix: launch/torchrun.sh does not restart it


class FFPipeError(ValueError):
    """Base class of every error caused by input a user can fix (config, data, files, arguments)."""


class ConfigError(FFPipeError):
    """A config key is unknown, has the wrong type or an impossible value."""


class DataError(FFPipeError):
    """A dataset is missing, truncated, corrupted or disagrees with the model."""


class TrainingError(FFPipeError):
    """Training cannot go on (for example a unit's loss became non-finite)."""


class PipelineError(FFPipeError):
    """A pipeline stage failed, timed out or disagrees with its neighbours."""


class NeighbourError(PipelineError):
    """This stage is fine, a neighbour is not: it died, went silent or its data never arrived."""
