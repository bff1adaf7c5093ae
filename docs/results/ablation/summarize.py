"""One table (stdout) and one JSON of every run folder under the given root: vote, mean, last, best unit, per unit."""
import json, sys
from pathlib import Path
rows = []
for s_path in sorted(Path(sys.argv[1]).glob("*/summary.json")):
    s = json.loads(s_path.read_text())
    rows.append({"run": s_path.parent.name, **{k: s.get(k) for k in (
        "test_accuracy", "test_accuracy_mean", "test_accuracy_last", "test_accuracy_best_unit", "vote", "vote_units",
        "vote_weights", "test_accuracy_per_unit", "images_per_second", "wall_seconds", "peak_memory_mib", "device",
        "date", "command", "epochs")}})
print("| run | vote acc | mean vote | last | best unit | per unit | img/s | wall s |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    pct = lambda v: "—" if v is None else f"{100 * v:.2f}"
    per = " ".join(f"{100 * a:.1f}" for a in r["test_accuracy_per_unit"] or [])
    print(f"| {r['run']} | {pct(r['test_accuracy'])} ({r['vote']}{' ' + str(r['vote_units']) if r['vote_units'] else ''}) | "
          f"{pct(r['test_accuracy_mean'])} | {pct(r['test_accuracy_last'])} | {pct(r['test_accuracy_best_unit'])} | {per} | "
          f"{r['images_per_second']:,.0f} | {r['wall_seconds']:.0f} |")
Path(sys.argv[2]).write_text(json.dumps(rows, indent=1))
