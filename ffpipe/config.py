"""Typed run configuration: TOML file + `--set section.key=value` overrides, validated early.

Every key is a dataclass field with a `doc` (shown by `ffpipe train --help-config`) and, where the
set of values is closed, its `choices`. Unknown keys, wrong types and impossible values raise
ConfigError naming the key and what is allowed. Each component gets only its own section.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from ffpipe.config_sections import (DATASETS, MODELS, PREPARE_INPUTS, AlgoConfig, DataConfig, ModelConfig,
                                    PipelineConfig, RunConfig, TrainConfig, _require)
from ffpipe.errors import ConfigError
from ffpipe.plugins import is_plugin

try:  # Python 3.11+; on 3.10 the same parser as the package tomli (a dependency there)
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - only on Python 3.10
    import tomli as tomllib

# The rest of ffpipe imports the sections and the names of models and datasets from here.
__all__ = ["DATASETS", "MODELS", "PREPARE_INPUTS", "SECTIONS", "AlgoConfig", "Config", "DataConfig", "ModelConfig",
           "PipelineConfig", "RunConfig", "TrainConfig", "check_names", "describe", "from_dict", "load", "load_tree",
           "merge", "parse_override", "parse_toml", "to_toml"]


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> "Config":
        for section in SECTIONS:
            getattr(self, section).validate()
        _require(not (self.algo.name == "ff" and self.model.name != "mlp"), "algo.name",
                 "'ff' (classic Forward-Forward) needs model.name = 'mlp'; use 'sff' for CNNs")
        _require(not (self.algo.name == "ff" and self.train.freeze_bodies), "train.freeze_bodies",
                 "classic FF units have no separate head to probe with; use algo.name = 'sff' or 'bp'")
        _require(self.algo.vote not in ("best_range", "weighted") or self.data.val_fraction > 0, "algo.vote",
                 f"'{self.algo.vote}' chooses on the validation split: set data.val_fraction (e.g. 0.1)")
        _require(not self.algo.deep_supervision or self.algo.name == "bp", "algo.deep_supervision",
                 "is BP's option (SFF units each have their head already); set algo.name = 'bp'")
        most = max(self.pipeline.replicas) if isinstance(self.pipeline.replicas, list) and self.pipeline.replicas else 1
        _require(self.train.batch_size >= most, "train.batch_size",
                 f"must be at least the largest pipeline.replicas ({most}): every replica needs rows")
        _require(self.train.microbatches == 1 or self.algo.name != "ff", "train.microbatches",
                 "> 1 cannot go with algo.name = 'ff' (its batches are positives then negatives, "
                 "which row slices would part): keep train.microbatches = 1 for classic FF")
        _require(self.train.microbatches == 1 or (most == 1 and self.pipeline.replicas != "auto"),
                 "train.microbatches", "> 1 cannot go with stage replicas (pipeline.replicas): keep one "
                 "of them at 1 (pipeline.replicas = [])")
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


def _coerce(key: str, value: Any, typ: type, choices: tuple, also: tuple = ()) -> Any:
    """Check one value against its declared type and choices; ints are accepted for floats."""
    if isinstance(value, str) and value in also:  # a word a list field also takes (e.g. 'auto')
        return value
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"config key '{key}' must be of type {typ.__name__}, "
                          f"got {value!r} ({type(value).__name__})")
    if choices and value not in choices:
        raise ConfigError(f"config key '{key}' = {value!r} is not allowed; "
                          f"choose one of: {', '.join(map(str, choices))}")
    return value


def _build_section(name: str, cls: type, values: dict) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config section '[{name}]' must be a table of keys, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(_unknown_key(name, key, fields))
        meta = fields[key].metadata
        if meta.get("plugin") and isinstance(value, str) and is_plugin(value):
            kwargs[key] = value  # 'package.module:function': imported where it is used (ffpipe/plugins.py)
            continue
        if meta.get("plugin") and isinstance(value, str) and value not in meta["choices"]:
            raise ConfigError(f"config key '{name}.{key}' = {value!r} is not allowed; choose one of: "
                              f"{', '.join(meta['choices'])}, or name a function of yours as "
                              "'package.module:function'")
        kwargs[key] = _coerce(f"{name}.{key}", value, hints[key], meta.get("choices", ()), meta.get("also", ()))
    return cls(**kwargs)


def parse_override(text: str) -> tuple[str, str, Any]:
    """'section.key=value' -> (section, key, value); the value is read as TOML, else as a string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set expects section.key=value (e.g. train.lr=0.1), got {text!r}")
    path, raw = text.split("=", 1)
    section, key = path.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value


def merge(tree: dict, overrides: list[str]) -> dict:
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        tree.setdefault(section, {})[key] = value
    return tree


def _unknown_key(section: str, key: str, keys, where: str = "") -> str:
    """The closest known key, for a typo (difflib), else every key of the section."""
    close = difflib.get_close_matches(key, list(keys), n=1)
    fix = f"did you mean '{section}.{close[0]}'?" if close else f"keys of [{section}]: {', '.join(keys)}"
    return f"unknown config key '{section}.{key}'{where}; {fix}"


def _unknown_section(section: str, where: str = "") -> str:
    close = difflib.get_close_matches(section, SECTIONS, n=1)
    fix = f"did you mean '[{close[0]}]'?" if close else f"sections: {', '.join(SECTIONS)}"
    return f"unknown config section '[{section}]'{where}; {fix}"


def check_names(tree: dict, where: str = "") -> None:
    """Every section and key of `tree` is one ffpipe knows (the nearest one suggested if not);
    `where` names the file it came from. Types and values are from_dict's to check."""
    hints = get_type_hints(Config)
    for section, values in tree.items():
        if section not in SECTIONS:
            raise ConfigError(_unknown_section(section, where))
        keys = [f.name for f in dataclasses.fields(hints[section])]
        for key in values if isinstance(values, dict) else ():
            if key not in keys:
                raise ConfigError(_unknown_key(section, key, keys, where))


def from_dict(tree: dict) -> Config:
    unknown = sorted(set(tree) - set(SECTIONS))
    if unknown:
        raise ConfigError(_unknown_section(unknown[0]))
    hints = get_type_hints(Config)
    sections = {name: _build_section(name, hints[name], tree.get(name, {})) for name in SECTIONS}
    return Config(**sections).validate()


def load(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the TOML file (if any), then each override in order."""
    return from_dict(load_tree(path, overrides))


def load_tree(path: str | Path | None = None, overrides: list[str] = ()) -> dict:
    """The TOML file (if any) with each override applied, not yet checked."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing TOML file "
                              "to --config, or leave --config out for the quickstart defaults")
        try:
            tree = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
        check_names(tree, f" in {path}")  # a typo in the file is named with the file
    return merge(tree, list(overrides))


def parse_toml(text: str) -> dict:
    """TOML text as a dict (every TOML read of ffpipe goes through here: tomllib or tomli)."""
    return tomllib.loads(text)


def to_toml(config: Config) -> str:
    """The resolved config as TOML that `load` reads back to an equal Config."""
    lines = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def describe() -> str:
    """Every key with its default, allowed values and doc: the reference printed by the CLI."""
    out = []
    hints = get_type_hints(Config)
    for section in SECTIONS:
        cls = hints[section]
        for f in dataclasses.fields(cls):
            default = getattr(cls(), f.name)
            choices = f.metadata.get("choices")
            allowed = f" (one of: {', '.join(choices)})" if choices else ""
            out.append(f"{section}.{f.name} = {_toml_value(default)}{allowed}\n    {f.metadata['doc']}")
    return "\n".join(out)
