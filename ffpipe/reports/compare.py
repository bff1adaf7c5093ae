"""`ffpipe compare RUN RUN...`: what differs between runs' configs, and their results side by side."""
from __future__ import annotations

from ffpipe.reports.runs import describe
from ffpipe.run.folder import RunFolder

RESULTS = (("status", "{}"), ("test_accuracy", "{:.2%}"), ("test_accuracy_last", "{:.2%}"),
           ("test_accuracy_best_unit", "{:.2%}"), ("images_per_second_steady", "{:,.0f}"),
           ("wall_seconds", "{:.0f}"), ("steps", "{}"), ("peak_memory_mib", "{:,.0f}"), ("device", "{}"))


def compare(locations: list[str]) -> str:
    folders = [RunFolder.open(location) for location in locations]
    configs = [_flat(f.config().to_dict()) for f in folders]
    rows = [describe(f) for f in folders]
    head = ["key", *(r["run"] for r in rows)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(set().union(*configs)):
        values = [c.get(key) for c in configs]
        if len({repr(v) for v in values}) > 1:  # only what differs
            lines.append(f"| {key} | " + " | ".join(repr(v) for v in values) + " |")
    if len(lines) == 2:
        lines.append("| (the configs are the same) |" + " |" * len(rows))
    for key, fmt in RESULTS:
        lines.append(f"| **{key}** | " + " | ".join("-" if r.get(key) is None else fmt.format(r[key]) for r in rows) + " |")
    return "\n".join(lines)


def _flat(tree: dict) -> dict:
    return {f"{section}.{key}": value for section, keys in tree.items() for key, value in keys.items()
            if key not in ("dir",)}
