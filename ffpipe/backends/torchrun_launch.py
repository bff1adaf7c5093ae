"""launch/torchrun.sh: torchrun on this node, one stage per process, with automatic restarts.

    python -m ffpipe.backends.torchrun_launch NUM_STAGES [--config FILE] [--set k=v ...] [--resume RUN]

Runs torchrun's agent in this process. When a stage process fails (an error, a non-finite loss,
a SIGKILL, an out-of-memory kill), the agent stops the others; this then names the failed stage
and its cause in one line, records it in the run folder and, up to pipeline.max_restarts times,
starts the same command again: every rank sees FFPIPE_ATTEMPT > 0 and resumes from the newest
checkpoint every stage has. A failure that repeats (same stage, same step, same cause) or an
error in the input is not restarted. Attempts are numbered on from those failures.jsonl already
records (FFPIPE_FIRST_ATTEMPT: this session's first), so a resumed run's records are its own.
"""
from __future__ import annotations

import argparse
import os
import sys

from ffpipe import config as config_mod
from ffpipe.errors import USER_ERROR_EXIT, FFPipeError
from ffpipe.pipeline.replicas.topology import Topology
from ffpipe.run import recovery
from ffpipe.run.folder import RunFolder, new_run_dir, run_location


def _parse(argv: list[str]) -> tuple[int, argparse.Namespace, list[str]]:
    if not argv or not argv[0].isdigit() or int(argv[0]) < 1:
        raise FFPipeError("usage: launch/torchrun.sh NUM_STAGES [--config FILE] [--set section.key=value ...] "
                          "[--resume RUN_DIR]")
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--resume")
    args, rest = p.parse_known_args(argv[1:])
    if rest:
        raise FFPipeError(f"launch/torchrun.sh: unknown arguments {rest}; it takes --config, --set and --resume")
    return int(argv[0]), args, argv[1:]


def _run_folder(n: int, args: argparse.Namespace, train_args: list[str]) -> tuple[RunFolder, int, list[str]]:
    """The run folder every attempt uses (fixed here, so restarts find it) and max_restarts."""
    if args.resume:  # on N processes: the layout may change (checkpoints are keyed by unit)
        folder = RunFolder.open(args.resume)
        cfg = folder.resume_config(args.overrides)
        return folder, cfg.pipeline.max_restarts, [*_sets(_stage_sets(n, cfg.pipeline)), *train_args]
    cfg = config_mod.load(args.config, [*_stage_sets(n, _asked(args)), *args.overrides])  # as the ranks will
    if cfg.run.dir:
        return RunFolder(run_location(cfg)), cfg.pipeline.max_restarts, train_args
    run_dir = new_run_dir(cfg)
    return RunFolder(run_location(cfg, run_dir)), cfg.pipeline.max_restarts, [*train_args, "--set", f"run.dir={run_dir}"]


def _asked(args: argparse.Namespace) -> dict:
    """The [pipeline] table the file and --set ask for (not yet checked: the stages come next)."""
    return config_mod.load_tree(args.config, args.overrides).get("pipeline", {})


def _stage_sets(n: int, pipeline) -> list[str]:
    """N processes are N stages, unless the config gives replicas (then they say how many)."""
    replicas = pipeline.get("replicas") if isinstance(pipeline, dict) else pipeline.replicas
    return ["pipeline.backend=torchrun"] + ([] if replicas else [f"pipeline.stages={n}"])


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _stage_of(rank: int, folder: RunFolder) -> int:
    """The stage a rank ran, by the layout of the attempt (ranks are replicas of stages, stage by stage)."""
    try:
        replicas = folder.layout()["replicas"]
    except FFPipeError:  # the ranks failed before rank 0 chose the layout
        return rank
    return Topology.of(replicas).place(rank).stage if sum(replicas) > rank else rank


def main(argv: list[str] | None = None) -> int:
    try:
        n, args, train_args = _parse(list(sys.argv[1:] if argv is None else argv))
        folder, max_restarts, train_args = _run_folder(n, args, train_args)
    except FFPipeError as err:
        print(f"ffpipe: error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    sets = [] if args.resume else _sets(_stage_sets(n, _asked(args)))
    command = [f"--nproc-per-node={n}", "--standalone", "--max-restarts=0", "-m", "ffpipe", "train",
               *sets, *train_args]
    attempt = recovery.Attempt.first_of(folder)
    try:
        while True:
            os.environ["FFPIPE_ATTEMPT"] = str(attempt.restarts)
            os.environ["FFPIPE_FIRST_ATTEMPT"] = str(attempt.first)
            try:
                torchrun(command)
                return 0
            except ChildFailedError as err:
                verdict = _after_failure(err, folder, attempt, max_restarts, n)
                if verdict is not None:
                    return verdict
            attempt = attempt.next()
    finally:  # every rank has stopped: what a killed one was writing goes
        if folder.exists():
            folder.sweep_temporaries()


def _culprit(err) -> tuple[int, object]:
    """The rank that failed first: one killed by a signal other than the agent's own SIGTERM
    (its neighbours then fail too, sometimes noticed first), else the earliest failure."""
    killed = {r: f for r, f in err.failures.items() if f.exitcode < 0 and f.signal_name() != "SIGTERM"}
    if killed:
        rank = min(killed, key=lambda r: killed[r].timestamp)
        return rank, killed[rank]
    return err.get_first_failure()


def _unreported(folder: RunFolder, attempt: recovery.Attempt, rank: int, failure) -> str:
    """Why a rank that reported nothing failed: it stopped answering (its neighbours said so before
    torchrun killed it: a stopped or hung process), or it died (out of memory, or killed)."""
    how = f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exit status {failure.exitcode}"
    silent = [f for f in folder.failures() if f["attempt"] == attempt.number and f"(rank {rank}) sent nothing" in f["cause"]]
    if silent:
        return (f"the stage process (rank {rank}) stopped answering: its neighbours heard nothing from it "
                f"for pipeline.timeout_s (a stopped or hung process), then torchrun ended it ({how})")
    return f"the stage process (rank {rank}) died without a report ({how}; out of memory, or killed)"


def _after_failure(err, folder: RunFolder, attempt: recovery.Attempt, max_restarts: int, n: int) -> int | None:
    """Name the failed stage, record it, and return the exit status, or None to restart."""
    rank, failure = _culprit(err)
    if failure.exitcode == USER_ERROR_EXIT or not folder.exists():
        return USER_ERROR_EXIT if failure.exitcode == USER_ERROR_EXIT else 1  # the rank said why
    if not [f for f in folder.failures() if f["attempt"] == attempt.number and not f.get("secondary")]:
        folder.record_failure(_stage_of(rank, folder), None, _unreported(folder, attempt, rank, failure),
                              attempt.number)
    root = recovery.root_cause(folder.failures(), attempt.number)
    at = f" at step {root['step']}" if root.get("step") is not None else ""
    what = f"ffpipe: stage {root['stage']} failed{at}: {root['cause']}"
    verdict = recovery.restart_verdict(folder.failures(), attempt, max_restarts)
    if verdict:
        print(f"{what}; {verdict}. After fixing the cause, continue with: launch/torchrun.sh {n} "
              f"--resume {folder}", file=sys.stderr, flush=True)
        return 1
    print(f"{what}; restarting ({attempt.restarts + 1} of {max_restarts}) from the newest checkpoint",
          file=sys.stderr, flush=True)
    return None


if __name__ == "__main__":
    sys.exit(main())
