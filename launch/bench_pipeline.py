"""Pipeline throughput benchmark: one config on every backend, beside BP and the sequential trainer.

    python launch/bench_pipeline.py --stages 2 4 [--config configs/bench_resnet18.toml]
        [--ray] [--out DIR] [--set section.key=value ...]

Runs, one after another on this machine: BP on one GPU, the sequential SFF trainer on one GPU,
SFF under torchrun with each number of stages, and (with --ray) SFF on Ray actors with the p2p
and the Ray-native transports at the largest number of stages. Prints a markdown table of
images/s (steady state), per-stage throughput, busy/waiting shares and peak memory per GPU, and
writes it (row by row, as each run ends) with every summary under --out. Figures are comparable
only within one invocation.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def runs(stages: list[int], ray: bool) -> list[tuple[str, int, list[str]]]:
    """(name, torchrun processes or 0, overrides) of every run, in order."""
    out = [("bp, 1 GPU", 0, ["algo.name=bp"]), ("sff sequential, 1 GPU", 0, [])]
    out += [(f"sff torchrun, {s} stages", s, ["pipeline.backend=torchrun", f"pipeline.stages={s}"]) for s in stages]
    if ray:
        s = max(stages)
        for transport in ("p2p", "ray"):
            out.append((f"sff ray {transport}, {s} stages", 0,
                        ["pipeline.backend=ray", f"pipeline.stages={s}", f"pipeline.transport={transport}"]))
    return out


def command(config: str, nproc: int, overrides: list[str]) -> list[str]:
    sets = [a for o in overrides for a in ("--set", o)]
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] \
        if nproc else [sys.executable]
    return [*head, "-m", "ffpipe", "train", "--config", config, *sets]


def row(name: str, s: dict) -> str:
    stages = s["stages"]
    per_stage = " / ".join(f"{st['images_per_second_steady'] or 0:,.0f}" for st in stages)
    busy = " / ".join(f"{(st['share_busy'] or 0) * 100:.0f}%" for st in stages)
    recv = " / ".join(f"{(st['share_waiting_recv'] or 0) * 100:.0f}%" for st in stages)
    memory = " / ".join(f"{st['peak_memory_mib'] / 1024:.1f}" for st in stages)
    return (f"| {name} | {s['images_per_second_steady'] or 0:,.0f} | {s['images_per_second']:,.0f} | "
            f"{per_stage} | {busy} | {recv} | {memory} | {s['test_accuracy']:.3f} |")


HEADER = ("| run | img/s (steady) | img/s (all epochs) | img/s per stage | busy per stage | "
          "waiting on previous | peak GiB per GPU | test acc |\n|---|---|---|---|---|---|---|---|")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "bench_resnet18.toml"))
    p.add_argument("--stages", type=int, nargs="+", default=[2, 4])
    p.add_argument("--ray", action="store_true", help="also run the Ray backend (needs ray)")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"{datetime.date.today()} · {_device()} · `{' '.join(sys.argv)}`", "", HEADER]
    table = out / "bench.md"
    table.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    for i, (name, nproc, overrides) in enumerate(runs(args.stages, args.ray)):
        run_dir = out / f"run{i}"
        cmd = command(args.config, nproc, [*args.overrides, *overrides, f"run.dir={run_dir}", "run.progress=false"])
        t0 = time.time()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=os.environ.copy())
        (out / f"run{i}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            line = f"| {name} | failed ({done.returncode}): see run{i}.log | | | | | | |"
            print(done.stderr[-2000:], file=sys.stderr)
        else:
            line = row(name, json.loads((run_dir / "summary.json").read_text()))
        # Each row as soon as it is measured: a run cut short keeps what it measured.
        with table.open("a") as f:
            f.write(line + "\n")
        print(line, flush=True)
        print(f"{name}: done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return 0


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU, torch {torch.__version__}"


if __name__ == "__main__":
    sys.exit(main())
