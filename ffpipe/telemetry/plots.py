"""PNG plots of a run (matplotlib without a display), each meant to be read at a glance:

  train_loss.png, train_accuracy.png  each unit's training curve by step
  test_accuracy_by_unit.png           the last evaluation: a bar per unit with its value written,
                                      the vote as a line, on an axis that shows the differences
  test_accuracy_by_epoch.png          the vote, the last unit and the best unit at every evaluation
  stage_timeline.png                  each stage's share of time busy, waiting on the previous
                                      stage and waiting on the next, over the run: the bottleneck
                                      is the stage that never waits
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402


def plot_run(rows: list[dict], out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = [r for r in rows if r["phase"] == "train"]
    test = [r for r in rows if r["phase"] == "test"]
    written = []
    for key in ("loss", "accuracy"):
        curves = defaultdict(list)
        for r in train:
            curves[r["unit"]].append((r["step"], r[key]))
        if curves:
            written.append(_lines(curves, key, f"training {key} of each unit", out_dir / f"train_{key}.png"))
    if any(r["unit"] >= 0 for r in test):
        written.append(_by_unit(test, out_dir / "test_accuracy_by_unit.png"))
        written.append(_by_epoch(test, out_dir / "test_accuracy_by_epoch.png"))
    if any(r.get("share_busy") is not None for r in train):
        written.append(_timeline(train, out_dir / "stage_timeline.png"))
    return written


def _save(fig, path: Path, layout: bool = True) -> Path:
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _lines(curves: dict, ylabel: str, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for unit, points in sorted(curves.items()):
        steps, values = zip(*sorted(points))
        ax.plot(steps, values, label=f"unit {unit}")
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def _by_unit(test: list[dict], path: Path) -> Path:
    last = max(r["epoch"] for r in test)
    final = sorted((r["unit"], r["accuracy"]) for r in test if r["epoch"] == last and r["unit"] >= 0)
    vote = next((r["accuracy"] for r in test if r["epoch"] == last and r["unit"] == -1), None)
    units, accuracy = zip(*final)
    values = [*accuracy, *([vote] if vote is not None else [])]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(units) + 2), 4))
    bars = ax.bar(units, accuracy, color="tab:blue")
    ax.bar_label(bars, labels=[f"{a:.1%}" for a in accuracy], fontsize=7, padding=2)
    if vote is not None:
        ax.axhline(vote, color="tab:red", linewidth=1.5, label=f"vote {vote:.2%}")
        ax.legend(loc="lower right", fontsize=8)
    low, high = min(values), max(values)
    ax.set_ylim(max(0.0, low - 0.1 * (high - low) - 0.02), min(1.0, high + 0.15 * (high - low) + 0.02))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # units are whole numbers
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set(xlabel="unit (depth)", ylabel="test accuracy", title=f"test accuracy of each unit, epoch {last + 1}")
    return _save(fig, path)


def _by_epoch(test: list[dict], path: Path) -> Path:
    epochs = sorted({r["epoch"] for r in test})
    pick = {"vote": lambda rs: next((r["accuracy"] for r in rs if r["unit"] == -1), None),
            "best unit": lambda rs: max(r["accuracy"] for r in rs if r["unit"] >= 0),
            "last unit": lambda rs: max(rs, key=lambda r: r["unit"])["accuracy"]}
    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, value), style in zip(pick.items(), ("-", "-", "--")):  # the last unit is often the best: dashed on top
        ys = [value([r for r in test if r["epoch"] == e]) for e in epochs]
        ax.plot([e + 1 for e in epochs], ys, style, marker="o", markersize=4, label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy by epoch")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _timeline(train: list[dict], path: Path) -> Path:
    by_stage = defaultdict(dict)
    for r in train:
        if r.get("share_busy") is not None:
            by_stage[r["stage"]][r["step"]] = r  # one row per unit: the stage's figures are the same
    stages = sorted(by_stage)
    fig, axes = plt.subplots(len(stages), 1, figsize=(7, 1.6 * len(stages) + 1), sharex=True, squeeze=False)
    t0 = min(r.get("time") or 0.0 for rs in by_stage.values() for r in rs.values())
    end = max(r.get("time") or 0.0 for rs in by_stage.values() for r in rs.values())
    scale, unit = (60.0, "minutes") if end - t0 > 300 else (1.0, "seconds")
    for ax, stage in zip(axes[:, 0], stages):
        rows = [by_stage[stage][s] for s in sorted(by_stage[stage])]
        xs = [((r.get("time") or t0) - t0) / scale for r in rows] if t0 else [r["step"] for r in rows]
        shares = [[r[k] or 0.0 for r in rows] for k in ("share_busy", "share_waiting_recv", "share_waiting_send")]
        ax.stackplot(xs, *shares, labels=["busy", "waiting on the previous stage", "waiting on the next stage"],
                     colors=["tab:green", "tab:orange", "tab:gray"])
        ax.set_ylim(0, 1)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylabel(f"stage {stage}")
    height = fig.get_figheight()
    fig.suptitle("where each stage's time went (the bottleneck never waits)", y=1 - 0.08 / height, va="top")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.38 / height),
               fontsize=8, ncol=3, frameon=False)
    axes[-1, 0].set_xlabel(unit if t0 else "step")
    fig.tight_layout()
    fig.subplots_adjust(top=1 - 0.7 / height)  # the title and the legend above the stages, no more
    return _save(fig, path, layout=False)
