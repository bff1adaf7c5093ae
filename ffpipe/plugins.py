"""Models and datasets a user brings: `model.name` or `data.name` set to "package.module:function"
names a function ffpipe imports and calls in every process that builds the model or reads the data
(stage processes, Ray actors), so its module must be importable there: an installed package, or
a folder on PYTHONPATH (`ray job submit` ships the working directory and puts it there).

The function is called with those of its parameters that ffpipe knows (by name; see the README,
"Bring your own"); what it returns is checked by the caller (ffpipe/models/plugin.py,
ffpipe/data/sources.py)."""
from __future__ import annotations

import importlib
import inspect
import re

from ffpipe.errors import ConfigError

PLUGIN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def is_plugin(name: str) -> bool:
    return bool(PLUGIN.fullmatch(name))


def load(name: str, key: str):
    """The function `name` ('package.module:function') names; a ConfigError that says what to
    fix where the module cannot be imported or has no such function."""
    module_name, attr = name.split(":")
    try:
        target = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ConfigError(f"{key} = {name!r}: cannot import {module_name} ({err}); install it, or put the "
                          "folder that holds it on PYTHONPATH (in every process that trains: Ray actors "
                          "and torchrun ranks too)") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{key} = {name!r}: {module_name} has no {attr!r}; name a function of it "
                              "as 'package.module:function'")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{key} = {name!r}: {attr} is a {type(target).__name__}, not a function")
    return target


def call(fn, key: str, **known):
    """fn(...) with the `known` arguments its signature takes by name; every parameter it has
    without a default must be one of them."""
    params = inspect.signature(fn).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    missing = [n for n, p in params.items() if n not in known and p.default is p.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        raise ConfigError(f"{key}: the function {fn.__name__} needs {', '.join(missing)}, which ffpipe does "
                          f"not give; it gives (by name): {', '.join(known)}")
    return fn(**{n: v for n, v in known.items() if takes_all or n in params})
