"""`ffpipe bench early-exit`: what early exit buys on a trained run. Every unit of an SFF network is
a classifier; `predict(min_confidence=p)` lets each image answer after the first unit whose vote
so far gives its top class a probability of at least p. For each threshold (and for each fixed
exit unit) the test accuracy and the average forward FLOPs an image needs (every unit and head up
to the one it answered at, counted by torch's FlopCounterMode on one image), against the whole
network's. The run's test split is read with the run's own data config (data.root may be given)."""
from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import torch

def bench_early_exit(args) -> int:
    from ffpipe.bench.devices import asked_device
    from ffpipe.inference.load import load_run

    results = {}
    for run in args.run_dirs:
        net = load_run(run, asked_device(args.device))
        images, labels = _test_split(net, args.overrides)
        results[run] = _curve(net, images, labels, args.thresholds)
        for line in _table(run, results[run]):
            print(line, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.plot:
        _plot(results, Path(args.plot))
    return 0


def _test_split(net, overrides: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    from ffpipe import config as config_mod
    from ffpipe.data.sources import load_source
    from ffpipe.run.folder import RunFolder

    cfg = RunFolder.open(net.run_dir).config()
    if overrides:  # e.g. data.root=... where the data lies on this machine
        cfg = config_mod.from_dict(config_mod.merge(cfg.to_dict(), overrides))
    test = load_source(cfg.data).test
    return test.images, test.labels


def unit_flops(net) -> list[float]:
    """Forward FLOPs of one image through each unit with its head (and vote)."""
    from torch.utils.flop_counter import FlopCounterMode

    pixels = torch.rand((1, *net.in_shape), device=net.mean.device)
    flops, units = [], net.units(pixels)
    with torch.no_grad():
        while True:
            with FlopCounterMode(display=False) as counter:
                if next(units, None) is None:
                    return flops
            flops.append(float(counter.get_total_flops()))


def _curve(net, images, labels, thresholds) -> dict:
    per_unit = unit_flops(net)
    cumulative = torch.tensor(per_unit).cumsum(0)
    whole = float(cumulative[net.rule.last_unit])
    rows = []
    settings = [("vote", None, None)] + [("p", None, p) for p in thresholds] + \
        [("unit", k, None) for k in range(net.rule.last_unit)]
    for kind, exit_at, p in settings:
        out = net.predict(images, exit_at=exit_at, min_confidence=p)
        accuracy = float((out.labels == labels).float().mean())
        average = float(cumulative[out.exit_unit].mean())
        rows.append({"setting": kind, "exit_at": exit_at, "min_confidence": p, "accuracy": accuracy,
                     "flops_per_image": average, "share_of_flops": average / whole,
                     "mean_exit_unit": float(out.exit_unit.float().mean())})
    return {"unit_flops": per_unit, "whole_flops": whole, "rows": rows, "date": str(datetime.date.today()),
            "device": str(net.mean.device), "command": " ".join(sys.argv)}


def _table(run: str, curve: dict) -> list[str]:
    full = curve["rows"][0]["accuracy"]
    lines = [f"{run}: {len(curve['unit_flops'])} units, {curve['whole_flops'] / 1e6:,.1f} MFLOPs per image "
             f"(every unit and head)", "", "| answer | test accuracy | x the vote | MFLOPs per image | share of "
             "FLOPs | mean exit unit |", "|---|---|---|---|---|---|"]
    for r in curve["rows"]:
        what = {"vote": "the run's vote (all units)", "p": f"min_confidence {r['min_confidence']}",
                "unit": f"exit_at {r['exit_at']}"}[r["setting"]]
        lines.append(f"| {what} | {100 * r['accuracy']:.2f}% | {r['accuracy'] / full:.4f} | "
                     f"{r['flops_per_image'] / 1e6:,.2f} | {100 * r['share_of_flops']:.1f}% | {r['mean_exit_unit']:.2f} |")
    return lines + [""]


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run, curve in results.items():
        rows = [r for r in curve["rows"] if r["setting"] == "p"] + [curve["rows"][0]]
        rows.sort(key=lambda r: r["share_of_flops"])
        ax.plot([r["share_of_flops"] for r in rows], [r["accuracy"] for r in rows], marker="o",
                label=Path(run).name)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("average FLOPs per image, share of the whole network's")
    ax.set_ylabel("test accuracy")
    ax.set_title("early exit: each image answers at the first confident unit")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
