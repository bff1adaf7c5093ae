"""Turn run folders into the markdown results table and one plot per experiment.

    python launch/report.py RUN_DIR... [--out docs/results.md] [--plots docs/plots]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ffpipe.errors import FFPipeError  # noqa: E402
from ffpipe.report import report  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", help="run folders: local paths or storage URIs")
    p.add_argument("--out", type=Path, help="write the table here (markdown)")
    p.add_argument("--plots", type=Path, help="write one PNG per experiment into this folder")
    args = p.parse_args()
    try:
        print(report(args.run_dirs, args.out, args.plots))
    except FFPipeError as err:
        print(f"report: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
