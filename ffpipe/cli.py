"""Command line: ffpipe train | eval. User errors end with one line and exit status 2."""
from __future__ import annotations

import argparse
import sys

from ffpipe import config as config_mod
from ffpipe.errors import FFPipeError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ffpipe", description="Scalable Forward-Forward, pipelined.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model (defaults: the quickstart)")
    t.add_argument("--config", help="TOML config file (optional)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key; repeatable")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or crashed run from the "
                   "newest checkpoint every stage has (its own config; --set may change only "
                   "run.*, logging and transport keys)")
    t.add_argument("--help-config", action="store_true", help="list every config key and exit")
    e = sub.add_parser("eval", help="test accuracy of a finished run's checkpoints")
    e.add_argument("--run-dir", required=True, help="the run folder written by ffpipe train")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        return _eval(args)
    except FFPipeError as err:
        print(f"ffpipe: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ffpipe: interrupted", file=sys.stderr)
        return 130


def _train(args) -> int:
    if args.help_config:
        print(config_mod.describe())
        return 0
    from ffpipe.entry import train

    if args.resume:
        from ffpipe.run import load_run_config
        from ffpipe.session import check_resume_overrides

        check_resume_overrides(args.overrides)
        cfg = load_run_config(args.resume, args.overrides)
    else:
        cfg = config_mod.load(args.config, args.overrides)
    run_dir, s = train(cfg, args.resume)
    if s is None:  # a torchrun rank other than the coordinator
        return 0
    if not s["completed"]:
        print(f"stopped after step {s['steps']} of {s['total_steps']}; continue with: "
              f"ffpipe train --resume {run_dir}")
        return 0
    print(f"test accuracy {s['test_accuracy']:.4f} (vote), {s['test_accuracy_last']:.4f} (last unit), "
          f"{s['test_accuracy_best_unit']:.4f} (best unit); {s['images_per_second']:,.0f} img/s; "
          f"{s['wall_seconds']:.1f} s; run folder {run_dir}")
    return 0


def _eval(args) -> int:
    from ffpipe.entry import evaluate

    r = evaluate(args.run_dir)
    per_unit = " ".join(f"{a:.3f}" for a in r["test_accuracy_per_unit"])
    print(f"test accuracy {r['test_accuracy']:.4f} (vote), {r['test_accuracy_last']:.4f} (last unit); "
          f"per unit: {per_unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
