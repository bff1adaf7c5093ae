"""ffpipe.train: a run from Python, as `ffpipe train` starts it from the command line."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ffpipe import config as config_mod
from ffpipe.config import Config
from ffpipe.errors import ConfigError


def train(config: Config | dict | str | Path | None = None, overrides: dict[str, Any] | None = None,
          *, resume: str | Path | None = None, **keys: Any) -> dict:
    """Train a run and return its summary (summary.json's fields, and "run_dir").

    `config`: a Config, a dict shaped like the TOML file ({"train": {"epochs": 2}}) or of dotted
    names ({"train.epochs": 2}), the path of a TOML file, or None (the defaults). Keys to change come after it, applied in order, either
    as a dict with dotted names, `overrides={"train.batch_size": 64}`, or as keywords with a
    double underscore between section and key, `train__batch_size=64`; values are Python values,
    checked as `--set` values are. `resume`: a run folder to go on with (its own config; only
    the keys `ffpipe train --resume` lets change may be given).
    """
    changes = {**(overrides or {}), **{_dotted(name): value for name, value in keys.items()}}
    if resume is not None:
        if config is not None:
            raise ConfigError("train(resume=...) goes on with the run's own config; pass no config")
        from ffpipe.run.folder import RunFolder
        cfg = RunFolder.open(resume).resume_config([f"{k}={_toml(v)}" for k, v in changes.items()])
    else:
        cfg = config_mod.from_dict(_with_changes(_tree(config), changes))
    from ffpipe.backends import train as train_with_backend  # torch and the backends: only to train

    run_dir, summary = train_with_backend(cfg, Path(resume) if resume is not None else None)
    return {**(summary or {}), "run_dir": str(run_dir)}


def _tree(config: Config | dict | str | Path | None) -> dict:
    if config is None or isinstance(config, (str, Path)):
        return config_mod.load_tree(config)
    if isinstance(config, Config):
        return config.to_dict()
    if isinstance(config, dict):  # sections, and dotted names applied over them
        sections = {k: v for k, v in config.items() if "." not in k}
        return _with_changes(sections, {k: v for k, v in config.items() if "." in k})
    raise ConfigError(f"config is a {type(config).__name__}; give a Config, a dict of sections, a TOML "
                      "file's path or None")


def _dotted(name: str) -> str:
    """train__batch_size -> train.batch_size"""
    if "__" not in name:
        raise ConfigError(f"train(..., {name}=...): write section__key (e.g. train__batch_size=64), or "
                          "pass overrides={'train.batch_size': 64}")
    return name.replace("__", ".", 1)


def _with_changes(tree: dict, changes: dict[str, Any]) -> dict:
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    for name, value in changes.items():
        section, dot, key = name.partition(".")
        if not dot or not key:
            raise ConfigError(f"override '{name}': write section.key (e.g. 'train.batch_size')")
        tree.setdefault(section, {})[key] = value
    return tree


def _toml(value: Any) -> str:
    """A Python value as the text `--set` reads back to it."""
    return config_mod._toml_value(value)
