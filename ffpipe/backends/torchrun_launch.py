"""launch/torchrun.sh: torchrun on this node, one stage per process, with automatic restarts.

    python -m ffpipe.backends.torchrun_launch NUM_STAGES [torchrun options] [--config FILE] [--set k=v ...] [--resume RUN]

torchrun's own options (TORCHRUN_OPTIONS: --nnodes, --node-rank, --rdzv-*, --max-restarts, ...)
are passed on to it. With several nodes (--nnodes other than 1, or --rdzv-endpoint) NUM_STAGES is
the processes of this node, every process of the world is a stage, run.dir must be given (the
same folder on every node) and torchrun's agents make the restarts (--max-restarts, default
pipeline.max_restarts), as they also do where --max-restarts is given on one node.

Runs torchrun's agent in this process. When a stage process fails (an error, a non-finite loss,
a SIGKILL, an out-of-memory kill), the agent stops the others (a stopped one too, at once:
torchrun_stopped.py); this then names the failed stage and its cause in one line, records it in
the run folder and, up to pipeline.max_restarts times,
starts the same command again: every rank sees FFPIPE_ATTEMPT > 0 and resumes from the newest
checkpoint every stage has. A failure that repeats (same stage, same step, same cause) or an
error in the input is not restarted. Attempts are numbered on from those failures.jsonl already
records (FFPIPE_FIRST_ATTEMPT: this session's first), so a resumed run's records are its own.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from ffpipe import config as config_mod
from ffpipe.backends.torchrun_stopped import StoppedChildrenWaker
from ffpipe.errors import USER_ERROR_EXIT, FFPipeError
from ffpipe.pipeline.replicas.topology import Topology
from ffpipe.run import recovery
from ffpipe.run.folder import RunFolder, new_run_dir, run_location


# torchrun's own options, passed on to it as given (either spelling: --node-rank or --node_rank).
TORCHRUN_OPTIONS = ("nnodes", "node-rank", "rdzv-backend", "rdzv-endpoint", "rdzv-id", "rdzv-conf",
                    "max-restarts", "monitor-interval", "master-addr", "master-port", "local-addr",
                    "log-dir", "redirects", "tee", "role", "start-method", "local-ranks-filter")
USAGE = ("usage: launch/torchrun.sh PROCESSES_PER_NODE [torchrun options: --nnodes --node-rank --rdzv-backend "
         "--rdzv-endpoint --rdzv-id --max-restarts ...] [--config FILE] [--set section.key=value ...] [--resume RUN_DIR]")


@dataclass
class Launch:
    """What launch/torchrun.sh was asked: processes on this node, torchrun's options (as
    `--name=value`), and ffpipe train's arguments."""
    nproc: int
    torchrun: list[str]
    args: argparse.Namespace
    train_args: list[str]

    @property
    def multinode(self) -> bool:
        """Several nodes (or an elastic range): the stages are the whole world's processes."""
        nnodes = self.option("nnodes")
        return (nnodes not in (None, "1", "1:1")) or self.option("rdzv-endpoint") is not None

    @property
    def torchrun_restarts(self) -> bool:
        """torchrun's agents restart the run (--max-restarts given, or several nodes, whose
        agents must restart together), not this launcher."""
        return self.multinode or self.option("max-restarts") is not None

    def option(self, name: str) -> str | None:
        given = [o.split("=", 1)[1] for o in self.torchrun if o.startswith(f"--{name}=")]
        return given[-1] if given else None


def _parse(argv: list[str]) -> Launch:
    if not argv or not argv[0].isdigit() or int(argv[0]) < 1:
        raise FFPipeError(USAGE)
    options = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name in TORCHRUN_OPTIONS:
        options.add_argument(f"--{name}", f"--{name.replace('-', '_')}", dest=name)
    torchrun_args, rest = options.parse_known_args(argv[1:])
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--config")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--resume")
    args, unknown = p.parse_known_args(rest)
    if unknown:
        raise FFPipeError(f"launch/torchrun.sh: unknown arguments {unknown}; it takes torchrun's "
                          f"{', '.join('--' + n for n in TORCHRUN_OPTIONS)}, and --config, --set and --resume")
    given = [f"--{name}={value}" for name, value in vars(torchrun_args).items() if value is not None]
    return Launch(int(argv[0]), given, args, rest)


def torchrun_command(launch: Launch, sets: list[str], train_args: list[str], max_restarts: int) -> list[str]:
    """torchrun's arguments: one node (--standalone: its own rendezvous) unless told the
    cluster's; restarts by torchrun where it makes them, else by this launcher (0 for torchrun)."""
    node = launch.torchrun if launch.multinode else ["--standalone", *launch.torchrun]
    if launch.option("max-restarts") is None:
        node = [*node, f"--max-restarts={max_restarts if launch.torchrun_restarts else 0}"]
    return [f"--nproc-per-node={launch.nproc}", *node, "-m", "ffpipe", "train", *sets, *train_args]


def _run_folder(launch: Launch) -> tuple[RunFolder, int, list[str]]:
    """The run folder every attempt uses (fixed here, so restarts find it) and max_restarts."""
    args, train_args = launch.args, launch.train_args
    if args.resume:  # on N processes: the layout may change (checkpoints are keyed by unit)
        folder = RunFolder.open(args.resume)
        cfg = folder.resume_config(args.overrides)
        return folder, cfg.pipeline.max_restarts, [*_sets(_stage_sets(launch, cfg.pipeline)), *train_args]
    cfg = config_mod.load(args.config, [*_stage_sets(launch, _asked(args)), *args.overrides])  # as the ranks will
    if cfg.run.dir:
        return RunFolder(run_location(cfg)), cfg.pipeline.max_restarts, train_args
    if launch.multinode:  # each node's launcher would name another folder
        raise FFPipeError("launch/torchrun.sh on several nodes: set run.dir, the same on every node "
                          "(a folder every node sees, or a name in run.storage), so restarts find the checkpoints")
    run_dir = new_run_dir(cfg)
    return RunFolder(run_location(cfg, run_dir)), cfg.pipeline.max_restarts, [*train_args, "--set", f"run.dir={run_dir}"]


def _asked(args: argparse.Namespace) -> dict:
    """The [pipeline] table the file and --set ask for (not yet checked: the stages come next)."""
    return config_mod.load_tree(args.config, args.overrides).get("pipeline", {})


def _stage_sets(launch: Launch, pipeline) -> list[str]:
    """N processes are N stages, unless the config gives replicas (then they say how many); on
    several nodes every process of the world is a stage (the ranks count them)."""
    replicas = pipeline.get("replicas") if isinstance(pipeline, dict) else pipeline.replicas
    fixed = replicas or launch.multinode
    return ["pipeline.backend=torchrun"] + ([] if fixed else [f"pipeline.stages={launch.nproc}"])


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
        launch = _parse(list(sys.argv[1:] if argv is None else argv))
        folder, max_restarts, train_args = _run_folder(launch)
    except FFPipeError as err:
        print(f"ffpipe: error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT
    sets = [] if launch.args.resume else _sets(_stage_sets(launch, _asked(launch.args)))
    command = torchrun_command(launch, sets, train_args, max_restarts)
    try:
        with StoppedChildrenWaker():  # a stopped stage ends at the teardown's SIGTERM, not 30 s later
            return _attempts(launch, folder, command, max_restarts)
    finally:  # every rank has stopped: what a killed one was writing goes
        if folder.exists():
            folder.sweep_temporaries()


def _attempts(launch: Launch, folder: RunFolder, command: list[str], max_restarts: int) -> int:
    """torchrun, then again after each failure this launcher restarts; the exit status."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    attempt = recovery.Attempt.first_of(folder)
    while True:
        os.environ["FFPIPE_ATTEMPT"] = str(attempt.restarts)
        os.environ["FFPIPE_FIRST_ATTEMPT"] = str(attempt.first)
        try:
            torchrun(command)
            return 0
        except ChildFailedError as err:
            if launch.torchrun_restarts:  # torchrun's agents restarted it as often as they may
                return _failed_after_torchrun_restarts(err, launch, folder)
            verdict = _after_failure(err, folder, attempt, max_restarts, launch.nproc)
            if verdict is not None:
                return verdict
        attempt = attempt.next()


def _failed_after_torchrun_restarts(err, launch: Launch, folder: RunFolder) -> int:
    rank, failure = _culprit(err)
    if failure.exitcode == USER_ERROR_EXIT:
        return USER_ERROR_EXIT  # the rank said why
    print(f"ffpipe: rank {rank} failed ({_how(failure)}) after torchrun's restarts (--max-restarts="
          f"{launch.option('max-restarts') or 'pipeline.max_restarts'}); failures.jsonl in {folder} says why; "
          f"continue, on every node, with the same command and --resume {folder}", file=sys.stderr, flush=True)
    return 1


def _how(failure) -> str:
    return f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exit status {failure.exitcode}"


def _culprit(err, silent: set[int] = frozenset()) -> tuple[int, object]:
    """The rank that failed first. A rank its neighbours named silent in this attempt (`silent`)
    comes first, however it ended: a stopped process is killed only at the teardown (by SIGTERM
    once it runs again, or SIGKILL), after ranks stuck in a transfer with it (CI chaos runs named
    such a rank "died without a report" where stage 0 had named the stopped one). Else one
    killed by a signal other than the agent's own SIGTERM (its neighbours then fail too,
    sometimes noticed first), else the earliest failure."""
    named = {r: f for r, f in err.failures.items() if r in silent}
    killed = {r: f for r, f in err.failures.items() if f.exitcode < 0 and f.signal_name() != "SIGTERM"}
    first = named or killed
    if first:
        rank = min(first, key=lambda r: first[r].timestamp)
        return rank, first[rank]
    return err.get_first_failure()


def _silent_ranks(folder: RunFolder, attempt: recovery.Attempt) -> set[int]:
    """Ranks a neighbour named silent in this attempt: they sent nothing for pipeline.timeout_s."""
    return {f["silent_rank"] for f in folder.failures()
            if f["attempt"] == attempt.number and f.get("silent_rank") is not None}


def _unreported(rank: int, failure, silent: set[int]) -> str:
    """Why a rank that reported nothing failed: it stopped answering (its neighbours said so before
    torchrun killed it, `silent`: a stopped or hung process), or it died (out of memory, or killed)."""
    how = _how(failure)
    if rank in silent:
        return (f"the stage process (rank {rank}) stopped answering: its neighbours heard nothing from it "
                f"for pipeline.timeout_s (a stopped or hung process), then torchrun ended it ({how})")
    return f"the stage process (rank {rank}) died without a report ({how}; out of memory, or killed)"


def _after_failure(err, folder: RunFolder, attempt: recovery.Attempt, max_restarts: int, n: int) -> int | None:
    """Name the failed stage, record it, and return the exit status, or None to restart."""
    silent = _silent_ranks(folder, attempt)
    rank, failure = _culprit(err, silent)
    if failure.exitcode == USER_ERROR_EXIT or not folder.exists():
        return USER_ERROR_EXIT if failure.exitcode == USER_ERROR_EXIT else 1  # the rank said why
    if not [f for f in folder.failures() if f["attempt"] == attempt.number and not f.get("secondary")]:
        folder.record_failure(_stage_of(rank, folder), None, _unreported(rank, failure, silent),
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
