"""`ffpipe predict`: the classes of image files by a trained run, as CSV.

Columns: path, class (its name), confidence (the answering vote's probability of that class),
exit_unit (the unit after which the answer was given: the vote's last unit unless an early exit
answered). The images are read in batches of the run's eval_batch_size, so a prediction equals
load_run(run).predict on the same images.
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from ffpipe.inference.images import image_files, read_images
from ffpipe.inference.load import load_run

COLUMNS = ["path", "class", "confidence", "exit_unit"]


def predict_files(run: str | Path, paths: list[str | Path], out: str | Path | None = None,
                  exit_at: int | None = None, min_confidence: float | None = None,
                  device: str = "cpu") -> list[dict]:
    """Predict every image file in `paths` (files, or folders searched for images); write the CSV
    to `out` (None: stdout). Returns the rows."""
    files = image_files(paths)
    network = load_run(run, device)
    rows = []
    for start in range(0, len(files), network.batch_size):
        batch = files[start:start + network.batch_size]
        found = network.predict(read_images(batch, network.in_shape, network.eval_crop), exit_at, min_confidence)
        rows += [{"path": str(path), "class": name, "confidence": f"{confidence:.6f}", "exit_unit": unit}
                 for path, name, confidence, unit in zip(batch, found.names, found.confidence.tolist(),
                                                         found.exit_unit.tolist())]
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    if out is None:
        sys.stdout.write(text.getvalue())
    else:
        Path(out).write_text(text.getvalue())
    return rows
