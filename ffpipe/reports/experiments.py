"""`ffpipe report RUN...`: run folders -> the markdown results table and one plot per experiment.

    ffpipe report RUN_DIR... [--out docs/results.md] [--plots docs/plots]   (launch/report.py: the same)

A run's experiment is its `run.experiment` (config key); its label is model, algorithm and
granularity. Each plot shows the test accuracy of every unit by depth, one line per run.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ffpipe.config import Config
from ffpipe.errors import optional_module
from ffpipe.run.folder import RunFolder

HEADER = ("| experiment | run | test acc vote | last unit | best unit | epochs | wall s | img/s | "
          "peak MiB | card | date | command |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def label(cfg: Config) -> str:
    algo = {"sff": "SFF hybrid" if cfg.model.granularity == "block" else "SFF pure",
            "bp": "BP", "ff": "classic FF"}[cfg.algo.name]
    subset = cfg.data.train_subset
    data = "" if not subset else f", {int(subset)}/class" if subset >= 1 else f", {subset:.0%}"
    seed = f", seed {cfg.train.seed}" if cfg.train.seed else ""
    return f"{cfg.model.name} {algo}{data}{seed}{_choices(cfg)}"


def _choices(cfg: Config) -> str:
    """The SFF and optimizer choices a run made away from the defaults, e.g. ' [log_mean_square τ0.3]'."""
    defaults = Config()
    notes = []
    if cfg.algo.name == "sff" and (cfg.algo.goodness, cfg.algo.temperature) != (defaults.algo.goodness, defaults.algo.temperature):
        notes.append(f"{cfg.algo.goodness} τ{cfg.algo.temperature:g}")
    if cfg.model.head_kernel != defaults.model.head_kernel and cfg.algo.name == "sff":
        notes.append(f"head k{cfg.model.head_kernel}")
    if cfg.train.optimizer != "adamw":
        notes.append(f"{cfg.train.optimizer} lr {cfg.train.lr:g}")
    if cfg.train.init_from:
        notes.append("frozen bodies" if cfg.train.freeze_bodies else "fine-tuned")
    return f" [{', '.join(notes)}]" if notes else ""


def load_runs(run_dirs: list[str | Path]) -> list[tuple[Config, dict, Path | str]]:
    runs = []
    for d in run_dirs:
        folder = RunFolder.open(d)
        runs.append((folder.config(), folder.summary(), folder.path))
    return runs


def table(runs: list[tuple[Config, dict, Path]]) -> str:
    lines = [HEADER]
    for cfg, s, _ in sorted(runs, key=lambda r: (r[0].run.experiment, label(r[0]))):
        acc = lambda v: "—" if v is None else f"{v * 100:.2f}"  # noqa: E731
        lines.append(f"| {cfg.run.experiment or '—'} | {label(cfg)} | {acc(s['test_accuracy'])} | "
                     f"{acc(s['test_accuracy_last'])} | {acc(s['test_accuracy_best_unit'])} | "
                     f"{s['epochs']} | {s['wall_seconds']:.0f} | {s['images_per_second']:,.0f} | "
                     f"{s['peak_memory_mib']:,.0f} | {s['device']} | {s['date'][:10]} | "
                     f"`{s.get('command', '')}` |")
    return "\n".join(lines)


def plot_experiments(runs: list[tuple[Config, dict, Path]], out_dir: Path) -> list[Path]:
    optional_module("matplotlib", "plots", "ffpipe report --plots").use("Agg")  # no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = defaultdict(list)
    for cfg, s, _ in runs:
        if s["test_accuracy_per_unit"]:
            groups[cfg.run.experiment or "runs"].append((label(cfg), s["test_accuracy_per_unit"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for experiment, lines in sorted(groups.items()):
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, per_unit in sorted(lines):
            if len(per_unit) == 1:  # one learner (BP): its accuracy as a reference line
                ax.axhline(per_unit[0], linestyle="--", linewidth=1, color="black", label=name)
            else:
                ax.plot(range(len(per_unit)), per_unit, marker="o", markersize=3, label=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # units are whole numbers
        ax.set_xlabel("unit (depth)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{experiment}: test accuracy of each unit")
        ax.legend(fontsize=6)
        fig.tight_layout()
        path = out_dir / f"{experiment}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def report(run_dirs: list[str | Path], out: Path | None, plots: Path | None) -> str:
    runs = load_runs(run_dirs)
    text = table(runs)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    if plots is not None:
        plot_experiments(runs, plots)
    return text

