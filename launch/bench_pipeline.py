"""The pipeline benchmark, as `ffpipe bench pipeline` (ffpipe/bench/pipeline.py) runs it:

    python launch/bench_pipeline.py --stages 2 4 [--ray] [--gpus N] [--no-peers] [--out DIR] ...
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ffpipe.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "pipeline", *sys.argv[1:]]))
