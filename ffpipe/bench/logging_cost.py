"""`ffpipe bench logging`: what the live loggers cost. The same run (one config, the same seed) is
trained with each choice of run.loggers in turn, round after round, so that a machine that slows
down over the minutes slows every choice alike; each is reported by its median steady images/s
(at the pipeline's last stage, after the first quarter of the steps) and as a ratio to the run
without loggers of the same rounds. On a shared machine that ratio moves by several percent from
run to run; the direct figures are the last columns, as shares of a stage's training time (the
largest over the stages): the time its loop spent handing rows and scalars over (telemetry_s),
and the time its writer thread spent writing them to the loggers and the metric file
(telemetry_writer_s; beside the loop, it costs only where the cores are all busy)."""
from __future__ import annotations

import datetime
import json
import statistics
import sys
from pathlib import Path

from ffpipe import config as config_mod
from ffpipe.bench.pipeline import command, device_name, run_logged
from ffpipe.errors import FFPipeError

CHOICES = {"none": "[]", "tensorboard": "['tensorboard']",
           "all": "['tensorboard', 'wandb', 'mlflow']"}


def bench_logging(args) -> int:
    if not Path(args.config).is_file():
        raise FFPipeError(f"bench logging: config file {args.config} does not exist; run from the "
                          "repository root or pass --config FILE")
    config_mod.load(args.config, args.overrides)  # a bad key: one line now, not in every run
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    speeds: dict[str, list[float]] = {name: [] for name in args.loggers}
    shares: dict[str, list[tuple[float, float]]] = {name: [] for name in args.loggers}
    for round_ in range(args.rounds):
        for name in args.loggers:
            speed, loop, writer = _measure(args, name, round_, out)
            speeds[name].append(speed)
            shares[name].append((loop, writer))
            print(f"round {round_ + 1}, loggers {name}: {speed:,.1f} img/s; of the training time, "
                  f"{100 * loop:.3f}% in the loop, {100 * writer:.3f}% in the writer", file=sys.stderr, flush=True)
    lines = _table(speeds, shares)
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return 0


def _measure(args, name: str, round_: int, out: Path) -> tuple[float, float, float]:
    run_dir, log = out / f"{name}-{round_}", out / f"{name}-{round_}.log"
    overrides = [*args.overrides, f"run.loggers={CHOICES[name]}", f"run.dir={run_dir}",
                 "run.progress=false", "run.plots=false"]
    why = run_logged(command(args.config, args.nproc, overrides), log, args.timeout_s)
    if why:
        raise FFPipeError(f"bench logging: the run with loggers {name} failed ({why}); see {log}")
    summary = json.loads((run_dir / "summary.json").read_text())
    share = lambda key: max(s[key] / max(s["train_seconds"], 1e-9) for s in summary["stages"])  # noqa: E731
    return summary["images_per_second_steady"] or 0.0, share("telemetry_s"), share("telemetry_writer_s")


def _table(speeds: dict[str, list[float]], shares: dict[str, list[tuple[float, float]]]) -> list[str]:
    base = statistics.median(speeds["none"]) if speeds.get("none") else None
    lines = [f"{datetime.date.today()} · {device_name()} · `{' '.join(sys.argv)}`", "",
             "| run.loggers | img/s (median) | x none | every round | loop's time on it | writer thread's time |",
             "|---|---|---|---|---|---|"]
    for name, values in speeds.items():
        median = statistics.median(values)
        versus = f"{median / base:.3f}" if base else "-"
        loop, writer = (statistics.median(s[i] for s in shares[name]) for i in (0, 1))
        lines.append(f"| {CHOICES[name]} | {median:,.1f} | {versus} | {' / '.join(f'{v:,.1f}' for v in values)} | "
                     f"{100 * loop:.3f}% | {100 * writer:.3f}% |")
    return lines
