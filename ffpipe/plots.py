"""PNG plots of a run's per-unit curves (matplotlib without a display)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_run(rows: list[dict], out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = [r for r in rows if r["phase"] == "train"]
    written = []
    for key in ("loss", "accuracy"):
        curves = defaultdict(list)
        for r in train:
            curves[r["unit"]].append((r["step"], r[key]))
        if curves:
            written.append(_lines(curves, key, f"training {key} of each unit", out_dir / f"train_{key}.png"))
    test = [r for r in rows if r["phase"] == "test" and r["unit"] >= 0]
    if test:
        last_epoch = max(r["epoch"] for r in test)
        final = sorted((r["unit"], r["accuracy"]) for r in test if r["epoch"] == last_epoch)
        written.append(_bars(final, out_dir / "test_accuracy_by_unit.png"))
    return written


def _lines(curves: dict, ylabel: str, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for unit, points in sorted(curves.items()):
        steps, values = zip(*sorted(points))
        ax.plot(steps, values, label=f"unit {unit}")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _bars(final: list[tuple[int, float]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    units, accuracy = zip(*final)
    ax.bar(units, accuracy)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # units are whole numbers
    ax.set_xlabel("unit (depth)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("test accuracy of each unit")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
