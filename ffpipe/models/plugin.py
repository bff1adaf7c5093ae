"""A model a user brings (model.name = "package.module:function", ffpipe/plugins.py): the function
returns the network as a list of units, each an nn.Module that maps the previous unit's output
(images N x C x H x W for the first) to its own: feature maps N x C x H x W (a goodness head of
algo.head's kind reads them) or features N x F. ffpipe wraps a plain module as a unit (a
SkipUnit with it as its body); a model whose skip connections cross units returns SkipUnits
itself (ffpipe.models.SkipUnit: push_skip on the unit whose input the skip carries, pop_skip and
a shortcut on the one that adds it), as ffpipe's own ResNets at layer granularity do."""
from __future__ import annotations

from torch import nn

from ffpipe.errors import ConfigError
from ffpipe.models.units import SkipUnit, by_resolution, dry_run
from ffpipe.plugins import call, load


def plugin_units(cfg, in_shape: tuple[int, ...]) -> list[nn.Module]:
    fn = load(cfg.name, "model.name")
    units = call(fn, "model.name", in_shape=tuple(in_shape), granularity=cfg.granularity, width=cfg.width,
                 depth=cfg.depth)
    if not isinstance(units, (list, tuple)) or not units or not all(isinstance(u, nn.Module) for u in units):
        raise ConfigError(f"model.name = {cfg.name!r} must return a non-empty list of torch.nn.Module "
                          f"units, got {type(units).__name__}")
    units = [u if isinstance(u, SkipUnit) else SkipUnit(u) for u in units]
    try:
        shapes = dry_run(units, tuple(in_shape))
    except Exception as err:  # noqa: BLE001 - the user's units, named with what went wrong
        raise ConfigError(f"model.name = {cfg.name!r}: its units do not run one after another on inputs "
                          f"of shape {list(in_shape)}: {type(err).__name__}: {str(err).splitlines()[0][:300]}") from None
    if any(len(s.out) not in (1, 3) for s in shapes):
        raise ConfigError(f"model.name = {cfg.name!r}: every unit must output N x C x H x W maps or N x F "
                          f"features; got {[list(s.out) for s in shapes]}")
    return by_resolution(units, in_shape) if cfg.granularity == "stage" else units
