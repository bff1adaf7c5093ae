"""Whether this process was started by torchrun, and the backend that follows from it.

`torchrun --nproc-per-node=2 -m ffpipe train` is how users call torchrun: without
`--set pipeline.backend=torchrun` each process would start a run of its own. So where the config
names no backend, a process torchrun started takes the torchrun backend; where it names another
one and torchrun started several processes, the run stops with one line naming both. Kept free of
torch, so that the command line can decide before torch is imported.
"""
from __future__ import annotations

from collections.abc import Mapping

from ffpipe.errors import ConfigError


def torchrun_world(environ: Mapping[str, str]) -> int | None:
    """The number of processes torchrun started (its WORLD_SIZE); None outside torchrun. torchrun
    sets TORCHELASTIC_RUN_ID; other launchers of torch.distributed set LOCAL_RANK with the rest."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    if not (environ.get("TORCHELASTIC_RUN_ID") or "LOCAL_RANK" in environ):
        return None
    return int(environ["WORLD_SIZE"])


def backend_sets(asked: str | None, environ: Mapping[str, str]) -> list[str]:
    """The --set to add for the backend torchrun implies: none outside torchrun or where the
    config asks for torchrun; `pipeline.backend=torchrun` where it asks for none (`asked` None)."""
    world = torchrun_world(environ)
    if world is None or asked == "torchrun":
        return []
    if asked is None:
        return ["pipeline.backend=torchrun"]
    if world > 1:
        raise ConfigError(f"torchrun started {world} processes but pipeline.backend = {asked!r}: each would "
                          f"train a run of its own; leave pipeline.backend out (or set it to 'torchrun') under "
                          f"torchrun, or start the '{asked}' backend without torchrun")
    return []  # one process: the backend asked for runs in it, as it would without torchrun
