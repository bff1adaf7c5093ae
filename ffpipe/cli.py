"""Command line: ffpipe train | eval | data prepare | bench step | memory | data | pipeline | runs | status |
compare | report. User errors end with one line and exit status 2."""
from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import sys
from pathlib import Path

from ffpipe import __version__
from ffpipe import config as config_mod
from ffpipe.bench import add_parsers as add_bench_parsers
from ffpipe.errors import USER_ERROR_EXIT, FFPipeError, say_error
from ffpipe.inference import commands as use_commands


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ffpipe", description="Scalable Forward-Forward, pipelined.")
    p.add_argument("--version", action="version", version=f"ffpipe {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model (no config file: small_cnn on Fashion-MNIST, 1 epoch)")
    t.add_argument("--config", help="TOML config file (optional)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key; repeatable")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or crashed run from the "
                   "newest checkpoint every stage has (its own config; --set may change only "
                   "run.*, logging and transport keys)")
    t.add_argument("--help-config", action="store_true", help="list every config key and exit")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config, the stage split with "
                   "predicted per-stage times and each stage's devices, then exit (no training, no run folder)")
    e = sub.add_parser("eval", help="test accuracy of a finished run's checkpoints")
    e.add_argument("--run-dir", required=True, help="the run folder written by ffpipe train (a local path or the storage URI it printed)")
    _data_parser(sub)
    add_bench_parsers(sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True))
    _runs_parsers(sub)
    use_commands.add_parsers(sub)  # predict, export
    return p


def _runs_parsers(sub) -> None:
    r = sub.add_parser("runs", help="the run folders in a folder: status, model, accuracy, img/s, steps")
    r.add_argument("folder", nargs="?", default="runs", help="a folder (or pyarrow URI) of run folders; default runs")
    r.add_argument("--json", help="also write every run's summary figures to this JSON file")
    st = sub.add_parser("status", help="where a run is now: each stage's step and rate, time left, last failure")
    st.add_argument("run_dir")
    c = sub.add_parser("compare", help="what differs in runs' configs, and their results side by side")
    c.add_argument("run_dirs", nargs="+")
    rp = sub.add_parser("report", help="the results table of run folders and one plot per experiment")
    rp.add_argument("run_dirs", nargs="+", help="run folders: local paths or storage URIs")
    rp.add_argument("--out", help="write the table here (markdown)")
    rp.add_argument("--plots", help="write one PNG per experiment into this folder")


def _data_parser(sub) -> None:
    d = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    p = d.add_parser("prepare", help="write a dataset's train and test splits as Parquet shards")
    p.add_argument("--dataset", required=True,
                   choices=[n for n in config_mod.DATASETS if n != "parquet"] + list(config_mod.PREPARE_INPUTS))
    p.add_argument("--root", default="", help="the dataset's folder ('' = its usual places)")
    p.add_argument("--out", required=True, help="folder (or pyarrow filesystem URI) for the shards")
    p.add_argument("--shard-mb", type=float, default=256,
                   help="a shard closes once its images reach this many MiB (default 256)")
    p.add_argument("--shard-size", type=int, default=0, help="also close a shard at this many images "
                   "(default 0: by size only)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                   help="another data key (e.g. data.test_fraction=0.1 for an image folder)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "data":
            return _prepare(args)
        if args.command == "bench":
            return _bench(args)
        if args.command in ("runs", "status", "compare", "report"):
            return _reports(args)
        if args.command in use_commands.COMMANDS:
            return use_commands.run_command(args)
        return _eval(args)
    except FFPipeError as err:
        say_error(f"ffpipe: error: {err}")  # under torchrun: from rank 0 only
        return USER_ERROR_EXIT
    except KeyboardInterrupt as err:
        again = f"{err.again} {err.folder}" if hasattr(err, "folder") else "ffpipe train --resume RUN_DIR"
        print(f"ffpipe: interrupted; the run goes on from its newest checkpoints with: {again}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ffpipe train --help-config | head`: the reader has gone
        sys.stderr.close()
        return 0


def run() -> None:
    """The process entry point (`ffpipe`, `python -m ffpipe`): main(), the exit handlers (Ray's
    shutdown among them), then an exit that skips the interpreter's teardown. Tearing down
    pyarrow's thread pools can abort a process that has finished ("terminate called without an
    active exception", SIGABRT; apache/arrow#34314): seen in two sequential runs of this test
    suite after every file of the run had been written."""
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream has nothing left to say
            pass
    os._exit(code)


def _train(args) -> int:
    if args.help_config:
        print(config_mod.describe())
        return 0
    cfg = _train_config(args)
    if args.dry_run:
        return _dry_run(args, cfg)
    from ffpipe.backends import train

    run_dir, s = train(cfg, args.resume)
    if s is None:  # a torchrun rank other than the coordinator
        return 0
    if not s["completed"]:
        again = (f"launch/torchrun.sh {s['num_stages']} --resume {run_dir}" if s["backend"] == "torchrun"
                 else f"ffpipe train --resume {run_dir}")
        print(f"stopped after step {s['steps']} of {s['total_steps']}; continue with: {again}")
        return 0
    print(f"test accuracy {s['test_accuracy']:.4f} (vote), {s['test_accuracy_last']:.4f} (last unit), "
          f"{s['test_accuracy_best_unit']:.4f} (best unit); {s['images_per_second']:,.0f} img/s; "
          f"{s['wall_seconds']:.1f} s; run folder {run_dir}")
    return 0


def _train_config(args) -> config_mod.Config:
    """The config first: a typo is answered before torch is imported. Under torchrun the backend
    follows from it where neither the file nor --set names one (backends/torchrun_env.py)."""
    from ffpipe.backends.torchrun_env import backend_sets

    if args.resume:  # the run's own backend may change: only --set counts as asked
        from ffpipe.run.folder import RunFolder

        asked = config_mod.merge({}, args.overrides).get("pipeline", {}).get("backend")
        return RunFolder.open(args.resume).resume_config([*args.overrides, *backend_sets(asked, os.environ)])
    tree = config_mod.load_tree(args.config, args.overrides)
    pipeline = tree.get("pipeline", {})
    if isinstance(pipeline, dict):  # else from_dict names the mistake
        tree = config_mod.merge(tree, backend_sets(pipeline.get("backend"), os.environ))
    return config_mod.from_dict(tree)


def _dry_run(args, cfg: config_mod.Config) -> int:
    if args.resume:
        raise config_mod.ConfigError("--dry-run plans a new run; leave out --resume (a run's own config "
                                     "is config.toml in its folder, its layout partition.json)")
    if os.environ.get("RANK", "0") != "0":  # under torchrun: rank 0 speaks for the run
        return 0
    from ffpipe.backends.dry_run import plan_run
    print(plan_run(cfg))
    return 0


def _eval(args) -> int:
    from ffpipe.run.evaluate import evaluate

    r = evaluate(args.run_dir)
    per_unit = " ".join(f"{a:.3f}" for a in r["test_accuracy_per_unit"])
    print(f"test accuracy {r['test_accuracy']:.4f} (vote), {r['test_accuracy_last']:.4f} (last unit); "
          f"per unit: {per_unit}")
    return 0


def _bench(args) -> int:
    if args.bench_command == "step":
        from ffpipe.bench.step import run_bench_step
        return run_bench_step(args)
    if args.bench_command == "memory":
        from ffpipe.bench.memory import bench_memory
        bench_memory(args)
        return 0
    if args.bench_command == "pipeline":
        from ffpipe.bench.pipeline import bench_pipeline
        return bench_pipeline(args)
    if args.bench_command == "early-exit":
        from ffpipe.bench.early_exit import bench_early_exit
        return bench_early_exit(args)
    if args.bench_command == "stream":
        from ffpipe.bench.stream import bench_stream
        return bench_stream(args)
    if args.bench_command == "logging":
        from ffpipe.bench.logging_cost import bench_logging
        return bench_logging(args)
    from ffpipe.bench.data import run_bench
    return run_bench(args)


def _reports(args) -> int:
    if args.command == "runs":
        from ffpipe.reports.runs import describe, format_runs, run_folders

        rows = [describe(folder) for folder in run_folders(args.folder)]
        print(format_runs(rows) if rows else f"no run folders in {args.folder}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    elif args.command == "status":
        from ffpipe.reports.runs import status
        print(status(args.run_dir))
    elif args.command == "compare":
        from ffpipe.reports.compare import compare
        print(compare(args.run_dirs))
    else:
        from ffpipe.reports.experiments import report
        print(report(args.run_dirs, Path(args.out) if args.out else None, Path(args.plots) if args.plots else None))
    return 0


def _prepare(args) -> int:
    from ffpipe.data.prepare import prepare_shards

    # An input of prepare only is no data.name: the other data keys are checked without it.
    named = {} if args.dataset in config_mod.PREPARE_INPUTS else {"name": args.dataset}
    tree = config_mod.merge({"data": {**named, "root": args.root}}, args.overrides)
    data = dataclasses.replace(config_mod.from_dict(tree).data, name=args.dataset)
    manifest = prepare_shards(data, args.out, args.shard_size, args.shard_mb)
    for split, entry in manifest["splits"].items():
        mb = entry["bytes"] / 2**20
        print(f"{split}: {len(entry['shards'])} shard(s), {mb:,.{0 if mb >= 10 else 1}f} MB in {args.out}/{split}")
    print(f"manifest: {args.out}/manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
