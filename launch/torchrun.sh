#!/usr/bin/env bash
# Run ffpipe as a pipeline of NUM_STAGES processes on this node, one stage (and one GPU) each.
#   launch/torchrun.sh NUM_STAGES [--config FILE] [--set section.key=value ...] [--resume RUN_DIR]
# torchrun's agent runs inside ffpipe's launcher: a failed stage is named in one line, recorded in
# the run folder, and the run restarts from its newest checkpoints (pipeline.max_restarts).
set -euo pipefail
source "$(dirname "$0")/venv.sh"   # python3: the repository's .venv where there is one
exec "${PYTHON:-python3}" -m ffpipe.backends.torchrun_launch "$@"
