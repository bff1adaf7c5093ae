"""`ffpipe bench pipeline`: one config on every backend, beside BP and its usual peers on N GPUs.

    ffpipe bench pipeline --stages 2 4 [--config configs/bench_resnet18.toml] [--ray]
        [--gpus N] [--no-peers] [--model M] [--shape C H W] [--classes K] [--max-batch CAP]
        [--peer-steps 50] [--peer-warmup 10] [--timeout-s 900] [--out DIR] [--set section.key=value ...]
        (launch/bench_pipeline.py: the same)

Runs, one after another on this machine:
  1. BP on one GPU (`ffpipe train`, algo.name=bp);
  2. DDP on N GPUs (--gpus, default the largest of --stages): the same BP network, the global
     batch split over the N ranks (ffpipe/bench/peers.py); then DDP with activation checkpointing
     around every unit, and DDP with each rank's share in K accumulation steps (K from
     --microbatches, the fastest reported);
  3. the sequential SFF trainer on one GPU, and SFF under torchrun with each number of stages;
  4. with --replicas 2x2 (or 2,1,1 ..., or 3xauto: 3 stages, replicas over --gpus), SFF under
     torchrun with stage replicas; with --ray, SFF on Ray actors with the p2p and the Ray-native
     transports at the largest number of stages;
  5. torch.distributed.pipelining's GPipe, 1F1B, interleaved 1F1B and the zero-bubble schedules
     (interleaved, ZBV) where the installed torch has them, on N GPUs: the BP network's units cut
     into N stages (2N, two per GPU, for the last three) balanced by forward FLOPs, with m = 2, 4
     and 8 microbatches (--microbatches; all but GPipe: m >= N); the row shows the best m.
Every run has the config's model, data, global batch and precision (--model, --shape and
--classes change the first two for all); --no-peers skips 2's DDP runs and 5.
The table gives images/s (ffpipe runs: steady state; peers: their timed steps), its ratio to BP
on one GPU and to DDP, per-stage throughput, busy/waiting shares, peak memory per GPU and test
accuracy (ffpipe runs only). It is written to --out/bench.md row by row as runs end (BP's row
once DDP's figure is in), with every summary, peer JSON and log beside it. A run that exceeds
--timeout-s is stopped (its whole process group) and becomes a "failed (timeout)" row. With
--max-batch, a second table: each row's largest global batch (ffpipe/bench/pipeline_batch.py).
Figures are comparable only within one invocation.
"""
from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ffpipe import config as config_mod
from ffpipe.bench import MICROBATCHES, SCHEDULES
from ffpipe.errors import FFPipeError
HEADER = ("| run | img/s (steady) | x BP 1 GPU | x DDP | img/s (all epochs) | img/s per stage | "
          "busy per stage | waiting on previous | ms per step per stage, predicted:busy (? not predicted) | "
          "peak GiB per GPU | test acc |\n|---|---|---|---|---|---|---|---|---|---|---|")


@dataclass
class Run:
    name: str
    peer: str = ""                       # "" = an ffpipe run; else a peer of ffpipe/bench/peers.py
    nproc: int = 0                       # processes under torchrun (0: a plain process)
    overrides: list[str] = field(default_factory=list)
    microbatches: tuple[int, ...] = (1,)  # peers: the counts tried, the best one reported
    reference: str = ""                  # "bp" or "ddp": later rows give their ratio to this run


@dataclass
class Result:
    images_per_s: float | None          # None: the run failed
    cells: list[str]                    # the columns after the two ratios
    note: str = ""                      # appended to the run's name
    failure: str = ""                   # why it failed, shown in the img/s column


def parse_replicas(text: str) -> list[int] | int:
    """'2x2' or '2,1,1' -> replicas per stage; '3xauto' -> 3 (stages, replicas chosen by the run)."""
    if "x" in text:
        stages, copies = text.split("x")
        return int(stages) if copies == "auto" else [int(copies)] * int(stages)
    return [int(v) for v in text.split(",")]


def replica_run(text: str, gpus: int) -> Run:
    counts = parse_replicas(text)
    if isinstance(counts, int):  # 'auto' over every GPU: the run balances split and replicas together
        return Run(f"sff torchrun, {counts} stages x auto replicas on {gpus} GPUs", nproc=gpus,
                   overrides=["pipeline.backend=torchrun", f"pipeline.stages={counts}", "pipeline.replicas=auto"])
    return Run(f"sff torchrun, {len(counts)} stage(s) x {counts} replicas", nproc=sum(counts),
               overrides=["pipeline.backend=torchrun", f"pipeline.replicas={counts}"])


SCHEDULE_LABELS = {"gpipe": "gpipe", "1f1b": "1f1b", "interleaved-1f1b": "interleaved 1f1b (2 stages per GPU)",
                   "zb-interleaved": "zero bubble interleaved (2 stages per GPU)",
                   "zbv": "zero bubble V (2 stages per GPU)"}


def runs(stages: list[int], ray: bool, gpus: int, peers: bool, replicas: list[str] = (),
         microbatches: tuple[int, ...] = MICROBATCHES, schedules: tuple[str, ...] = SCHEDULES) -> list[Run]:
    """Every run, in order: BP then DDP first, as every later row is a ratio to them."""
    one = ["pipeline.backend=local", "pipeline.stages=1"]  # whatever the config's pipeline says
    out = [Run("bp, 1 GPU", overrides=["algo.name=bp", *one], reference="bp")]
    if peers:
        out.append(Run(f"ddp, {gpus} GPUs", "ddp", gpus, reference="ddp"))
        out.append(Run(f"ddp + activation checkpointing per unit, {gpus} GPUs", "ddp-ckpt", gpus))
        out.append(Run(f"ddp + gradient accumulation, {gpus} GPUs", "ddp-accum", gpus, microbatches=microbatches))
    out.append(Run("sff sequential, 1 GPU", overrides=one))
    out += [Run(f"sff torchrun, {s} stages", nproc=s,
                overrides=["pipeline.backend=torchrun", f"pipeline.stages={s}"]) for s in stages]
    out += [replica_run(text, gpus) for text in replicas]
    if ray:
        s = max(stages)
        out += [Run(f"sff ray {t}, {s} stages", overrides=["pipeline.backend=ray", f"pipeline.stages={s}",
                                                          f"pipeline.transport={t}"]) for t in ("p2p", "ray")]
    if peers:
        at_least_one_per_rank = tuple(m for m in microbatches if m >= gpus)  # what all but GPipe need
        out += [Run(f"{SCHEDULE_LABELS[name]}, {gpus} GPUs", name, gpus,
                    microbatches=microbatches if name == "gpipe" else at_least_one_per_rank) for name in schedules]
    return out


def torchrun_head(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]


def command(config: str, nproc: int, overrides: list[str]) -> list[str]:
    sets = [a for o in overrides for a in ("--set", o)]
    head = torchrun_head(nproc) if nproc else [sys.executable]
    return [*head, "-m", "ffpipe", "train", "--config", config, *sets]


def peer_command(args, run: Run, microbatches: int, out_json: Path) -> list[str]:
    sets = [a for o in args.overrides for a in ("--set", o)]
    return [*torchrun_head(run.nproc), "-m", "ffpipe.bench.peers", run.peer, "--config", args.config,
            "--microbatches", str(microbatches), "--steps", str(args.peer_steps),
            "--warmup", str(args.peer_warmup), "--out", str(out_json), *sets]


def run_logged(cmd: list[str], log: Path, timeout_s: float) -> str:
    """Run `cmd` with its output in `log`: '' if it succeeded, else why not ('exit 1', 'timeout').
    It runs in a session of its own, so a timeout (or Ctrl-C) stops torchrun's workers too."""
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return "timeout"
        finally:
            if proc.poll() is None:
                _stop_group(proc)
    return "" if code == 0 else f"exit {code}"


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL to what is left after 15 s."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait_s)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def _failed(why: str, log: str) -> Result:
    print(f"failed ({why}); the end of {log}:\n{_tail(log)}", file=sys.stderr, flush=True)
    return Result(None, [""] * 7, failure=f"failed ({why}): see {Path(log).name}")


def _tail(log: str, chars: int = 2000) -> str:
    return Path(log).read_text(errors="replace")[-chars:]


def measure_ffpipe(args, run: Run, i: int, out: Path) -> Result:
    run_dir, log = out / f"run{i}", out / f"run{i}.log"
    cmd = command(args.config, run.nproc, [*args.overrides, *run.overrides, f"run.dir={run_dir}",
                                           "run.progress=false"])
    why = run_logged(cmd, log, args.timeout_s)
    if why:
        return _failed(why, str(log))
    s = json.loads((run_dir / "summary.json").read_text())
    return Result(s["images_per_second_steady"] or 0, ffpipe_cells(s))


def ffpipe_cells(s: dict) -> list[str]:
    """The columns of an ffpipe run, from its summary.json."""
    stages = s["stages"]
    per_stage = " / ".join(f"{st['images_per_second_steady'] or 0:,.0f}" for st in stages)
    # GPU busy (CUDA events around every step) where measured, else the host's working share
    share = lambda st: st.get("share_busy_gpu") if st.get("share_busy_gpu") is not None else st["share_busy"]  # noqa: E731
    busy = " / ".join(f"{(share(st) or 0) * 100:.0f}%" for st in stages)
    recv = " / ".join(f"{(st['share_waiting_recv'] or 0) * 100:.0f}%" for st in stages)
    memory = " / ".join(f"{st['peak_memory_mib'] / 1024:.1f}" for st in stages)
    ms = lambda v: "?" if v is None else f"{v * 1000:.1f}"  # noqa: E731
    times = " / ".join(f"{ms(st.get('predicted_step_s'))}:{ms(st.get('busy_step_s'))}" for st in stages)
    return [f"{s['images_per_second']:,.0f}", per_stage, busy, recv, times, memory, f"{s['test_accuracy']:.3f}"]


def measure_peer(args, run: Run, out: Path) -> Result:
    """The peer at each microbatch count in turn; the fastest one's figures."""
    counted = run.peer not in ("ddp", "ddp-ckpt")  # the others try counts: m microbatches, K slices
    letter = "K" if run.peer == "ddp-accum" else "m"
    results, failed = {}, []
    for m in run.microbatches:
        stem = f"{run.peer}_{letter}{m}" if counted else run.peer
        out_json, log = out / f"{stem}.json", out / f"{stem}.log"
        why = run_logged(peer_command(args, run, m, out_json), log, args.timeout_s)
        if why:
            _failed(why, str(log))
            failed.append(f"{letter}={m} {why}" if counted else why)
        else:
            results[m] = json.loads(out_json.read_text())
    if not results:
        why = "; ".join(failed) or f"no microbatch count tried is >= {run.nproc}"
        logs = f"{run.peer}_{letter}*.log" if counted else f"{run.peer}.log"
        return Result(None, [""] * 7, failure=f"failed ({why}): see {logs}")
    best = max(results, key=lambda m: results[m]["images_per_second"])
    r = results[best]
    note = f" (best of {letter}={','.join(map(str, run.microbatches))}: {letter}={best}" \
           f"{''.join(f'; {f}' for f in failed)})" if counted else ""
    memory = " / ".join(f"{mib / 1024:.1f}" for mib in r["peak_memory_mib"])
    return Result(r["images_per_second"], ["-", "-", "-", "-", "-", memory, "-"], note)


def ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}" if value is not None and reference else "-"


def line(run: Run, r: Result, bp: float | None, ddp: float | None) -> str:
    speed = r.failure if r.images_per_s is None else f"{r.images_per_s:,.0f}"
    cells = [run.name + r.note, speed, ratio(r.images_per_s, bp), ratio(r.images_per_s, ddp), *r.cells]
    return "| " + " | ".join(cells) + " |"


def write_rows(table: Path, pending: list[tuple[Run, Result]], speeds: dict) -> None:
    with table.open("a") as f:
        for run, result in pending:
            row = line(run, result, speeds.get("bp"), speeds.get("ddp"))
            f.write(row + "\n")
            print(row, flush=True)
    pending.clear()


def bench_pipeline(args) -> int:
    if not Path(args.config).is_file():
        raise FFPipeError(f"bench pipeline: config file {args.config} does not exist; run from the "
                          "repository root (configs/bench_resnet18.toml) or pass --config FILE")
    args.overrides = [*model_data_overrides(args), *args.overrides]
    cfg = config_mod.load(args.config, args.overrides)  # a bad config or key: one line now, not in every row
    args.gpus, args.start_batch = args.gpus or max(args.stages), cfg.train.batch_size
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"{datetime.date.today()} · {device_name()} · `{' '.join(sys.argv)}`", "", HEADER]
    table = out / "bench.md"
    table.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    from ffpipe.bench.pipelining import available_schedules  # imports torch

    plan = runs(args.stages, args.ray, args.gpus, args.peers, args.replicas, tuple(args.microbatches),
                available_schedules())
    last_reference = max(i for i, run in enumerate(plan) if run.reference)
    speeds, pending = {}, []
    for i, run in enumerate(plan):
        t0 = time.time()
        result = measure_row(args, run, i, out)
        if run.reference:
            speeds[run.reference] = result.images_per_s
        pending.append((run, result))
        print(f"{run.name}: done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        if i >= last_reference:
            # Each row as soon as it is measured and its references are (BP's waits for DDP):
            # a run cut short keeps what it measured.
            write_rows(table, pending, speeds)
    if args.max_batch:
        from ffpipe.bench.pipeline_batch import write_batch_table

        write_batch_table(args, plan, measure_row, out, table)
    return 0


def measure_row(args, run: Run, i: int, out: Path) -> Result:
    return measure_peer(args, run, out) if run.peer else measure_ffpipe(args, run, i, out)


def model_data_overrides(args) -> list[str]:
    """--model, --shape and --classes as config keys (the last two make the data synthetic)."""
    sets = [f"model.name={args.model}"] if args.model else []
    if args.shape or args.classes:
        sets.append("data.name=synthetic")
    if args.shape:
        sets.append(f"data.synthetic_shape=[{', '.join(map(str, args.shape))}]")
    if args.classes:
        sets.append(f"data.synthetic_classes={args.classes}")
    return sets


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU, torch {torch.__version__}"
