"""ffpipe's Triton kernels (the pooled head's one-read window terms, the boundary norm, the
goodness head's loss, the crops' resize) run by Triton's interpreter on the CPU against the plain
path: their indexing, masks and statistics are tested where there is no GPU (tests/gpu runs them
compiled)."""
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytest.importorskip("triton")


def test_triton_kernels_agree_with_the_plain_path_under_the_interpreter():
    # one thread: the interpreter's numpy work otherwise fights the other test worker for the cores
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "tests.helpers.interpreted"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["ok", "check_window_terms", "ok", "check_spread",
                                  "ok", "check_norm_in_backward", "ok", "check_row_norm",
                                  "ok", "check_unit_step", "ok", "check_goodness_loss", "ok", "check_crop_resize"]
