"""The results table and one plot per experiment, as `ffpipe report` (ffpipe/reports/experiments.py):

    python launch/report.py RUN_DIR... [--out docs/results.md] [--plots docs/plots]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ffpipe.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
