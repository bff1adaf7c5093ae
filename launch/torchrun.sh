#!/usr/bin/env bash
# Run ffpipe as a pipeline of NUM_STAGES processes on this node, one stage (and one GPU) each.
#   launch/torchrun.sh NUM_STAGES [--config FILE] [--set section.key=value ...] [--resume RUN_DIR]
# On several nodes, torchrun's options pass through (NUM_STAGES: this node's processes), e.g. on each node
#   launch/torchrun.sh 4 --nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \
#       --rdzv-id=exp1 --set run.dir=/shared/runs/exp1 [--config FILE] [--set ...]
# torchrun's agent runs inside ffpipe's launcher: a failed stage is named in one line, recorded in
# the run folder, and the run restarts from its newest checkpoints (pipeline.max_restarts).
set -euo pipefail
source "$(dirname "$0")/venv.sh"   # python3: the repository's .venv where there is one
exec "${PYTHON:-python3}" -m ffpipe.backends.torchrun_launch "$@"
