"""Checkpoints keyed by unit: what each unit has learned after n steps, whatever stage held it.

    checkpoints/step-<n>-units-<a>-<b>.pt   units a..b (inclusive) after n optimizer steps

Each stage saves its units on its own, in one file: for every unit its learner's tensors and its
optimizer state by parameter name. Every unit learns alone, so a run resumes from any step whose
files hold every unit once (a *complete* step) on any layout: other stages, boundaries, replicas
or backend learn bit for bit what the saving layout would have learned (CPU).

Whole or absent, and proven whole: a file is written to a temporary name and renamed; before a
step is chosen every one of its files is read in full and each record's CRC checked (torch writes
zip archives with CRC-32s), so a flipped bit or a file cut short is named and the step before is
taken. Files hold tensors and plain values only and load with `weights_only=True`.

Retention cannot lose the common step: after saving, a stage deletes only files of steps older
than the two newest complete steps, and only those holding its own units. Run folders of the earlier
layout (checkpoints/stage-<k>/step-<n>.pt) are read by run/legacy.py.
"""
from __future__ import annotations

import io
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass


from ffpipe.errors import FFPipeError, StorageError
from ffpipe.run import legacy
from ffpipe.run.folder import RunFolder

FORMAT = 2
FOLDER = "checkpoints"
_NAME = re.compile(r"^step-(\d+)-units-(\d+)-(\d+)\.pt$")


@dataclass(frozen=True, order=True)
class Saved:
    """One checkpoint file: units first..last after `step` steps."""
    step: int
    first: int
    last: int

    @property
    def name(self) -> str:
        return f"{FOLDER}/step-{self.step:09d}-units-{self.first:04d}-{self.last:04d}.pt"

    @property
    def units(self) -> range:
        return range(self.first, self.last + 1)


def saved(folder: RunFolder) -> list[Saved]:
    """Every checkpoint file in the run folder, oldest first."""
    return sorted(Saved(*map(int, m.groups())) for n in folder.store.list(FOLDER) if (m := _NAME.match(n)))


def complete_steps(files: list[Saved], num_units: int) -> dict[int, list[Saved]]:
    """The steps whose files hold every unit exactly once, with those files."""
    by_step: dict[int, list[Saved]] = {}
    for f in files:
        by_step.setdefault(f.step, []).append(f)
    return {step: fs for step, fs in by_step.items()
            if sorted(u for f in fs for u in f.units) == list(range(num_units))}


def save_units(folder: RunFolder, step: int, epoch: int, units: dict[int, dict], num_units: int) -> str:
    """Write a stage's units after `step` steps (whole or not at all), then drop what retention allows."""
    import torch  # here: listing run folders (ffpipe runs) needs no torch

    file = Saved(step, min(units), max(units))
    record = {"format": FORMAT, "step": step, "epoch": epoch, "units": units}
    try:
        folder.store.write(file.name, lambda f: torch.save(record, f))
    except (OSError, RuntimeError) as err:
        raise StorageError(_unwritable(folder, file.name, err)) from None
    prune(folder, file.units, num_units)
    return file.name


def _unwritable(folder: RunFolder, name: str, err: BaseException) -> str:
    """Why a checkpoint could not be written, in one line: the path, and the free space."""
    cause = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    local = folder.store.local_path(name)
    free = ""
    if local is not None:
        usage = shutil.disk_usage(next(p for p in local.parents if p.exists()))
        free = f"; {usage.free / 2**20:,.0f} MiB free of {usage.total / 2**30:,.1f} GiB on its disk"
        if usage.free < 64 * 2**20:
            cause = f"the disk is full ({cause})"
    return (f"cannot write checkpoint {folder}/{name}: {cause}{free}; make room (or move run.dir) and "
            f"go on with ffpipe train --resume {folder}")


def prune(folder: RunFolder, mine: range, num_units: int) -> None:
    """Delete files that hold any of `mine`, of steps older than the two newest complete steps
    (the older of them is there in case a file of the newer one turns out damaged). A complete
    step any stage has seen is deleted only by one that has seen two newer ones."""
    files = saved(folder)
    complete = sorted(complete_steps(files, num_units))
    if not complete:
        return
    keep_from = complete[-2] if len(complete) > 1 else complete[-1]
    for f in files:
        if f.step < keep_from and set(f.units) & set(mine):
            folder.store.delete(f.name)


def discard_after(folder: RunFolder, step: int) -> None:
    """Before an attempt that starts after `step` steps: the files of later steps (none of them
    complete, or they would have been chosen; the attempt writes them again, perhaps on another
    layout) and the temporaries of writers that were killed."""
    for f in saved(folder):
        if f.step > step:
            folder.store.delete(f.name)
    folder.sweep_temporaries()  # no process of the run writes before the attempt starts


def resume_step(folder: RunFolder, num_units: int) -> int | None:
    """The newest complete step whose files are all whole (None: there is none). A damaged file
    is named in a warning and the step before is tried."""
    complete = complete_steps(saved(folder), num_units)
    if not complete:
        return legacy.resume_step(folder, num_units, _whole)
    for step in sorted(complete, reverse=True):
        damaged = [f for f in complete[step] if not _whole(folder, f.name)]
        if not damaged:
            return step
        print(f"ffpipe: warning: checkpoint {folder}/{damaged[0].name} is damaged (a CRC or the archive "
              "does not check out); resuming from the step before", file=sys.stderr)
    return None


def unusable(folder: RunFolder, num_units: int) -> str | None:
    """Why the run's checkpoints cannot be resumed although it saved complete steps: their units
    are not this model's, or every complete step has a damaged file (None: it has no complete
    step yet, nothing is lost by starting at 0, or there is a usable one)."""
    files = saved(folder)
    held = max((f.last for f in files), default=-1) + 1
    # Fewer units than the model's are another model's complete step, or this run's step in the
    # making: upstream stages saved it, a later one failed first. plan.json, written when the run
    # began, tells (a restart or resume must not stop there: it starts at 0)
    in_making = (folder.plan() or {}).get("num_units") == num_units
    if held > num_units or (not in_making and not complete_steps(files, num_units) and complete_steps(files, held)):
        return (f"its checkpoints hold units 0-{held - 1} but this model has {num_units}: they are another "
                "model's (resume with the run's own config)")
    if complete_steps(files, num_units) or legacy.has_checkpoints(folder):
        return "every complete step has a damaged file (see the warnings above)"
    return None


def _whole(folder: RunFolder, name: str) -> bool:
    """Every byte read and every record's CRC-32 checked (zipfile.testzip), and safe to load."""
    import torch  # here: listing run folders (ffpipe runs) needs no torch

    try:
        data = folder.store.read_bytes(name)
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if archive.testzip() is not None:
                return False
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return True
    except Exception:  # noqa: BLE001 - whatever is wrong with it, it is not a usable checkpoint
        return False


def read_units(folder: RunFolder, step: int, wanted: list[int] | range, map_location="cpu",
               trainable=None) -> dict[int, dict]:
    """The units `wanted` after `step` steps: {unit: {"learner": tensors, "optimizer": {parameter
    name: state}}}. `trainable(unit)`: its parameters the optimizer holds, in order (needed only to
    name the optimizer states of the earlier layout's files)."""
    files = [f for f in saved(folder) if f.step == step]
    if files:
        out = {}
        for f in files:
            if set(f.units) & set(wanted):
                out.update(_load(folder, f.name, map_location)["units"])
    else:
        out = legacy.read_units(folder, step, wanted, trainable, map_location)
    missing = sorted(set(wanted) - set(out))
    if missing:
        raise FFPipeError(f"{folder}: no checkpoint holds unit(s) {missing} at step {step}; the run "
                          "folder is incomplete")
    return {u: out[u] for u in wanted}


def _load(folder: RunFolder, name: str, map_location) -> dict:
    import torch  # here: listing run folders (ffpipe runs) needs no torch

    store = folder.store
    local = store.local_path(name)
    try:
        if local is not None:
            return torch.load(local, map_location=map_location, weights_only=True)
        # whole, in one read: torch.load's many small reads would each be a request to the store
        return torch.load(io.BytesIO(store.read_bytes(name)), map_location=map_location, weights_only=True)
    except Exception as err:  # a damaged file or one holding code: name it, no pickle traceback
        raise FFPipeError(f"checkpoint {folder}/{name} cannot be read ({str(err).splitlines()[0][:200]}); "
                          "delete it to fall back to the one before") from None
