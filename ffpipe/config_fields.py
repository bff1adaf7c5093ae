"""A config field with its documentation and allowed values, and the check that names a bad key."""
from __future__ import annotations

from dataclasses import field

from ffpipe.errors import ConfigError


def _f(default, doc: str, choices: tuple = (), **kw):
    """A config field with its documentation and, optionally, its allowed values."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"doc": doc, "choices": choices, **kw})


def _require(ok: bool, key: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' {what}")
