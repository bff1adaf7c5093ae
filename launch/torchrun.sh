#!/usr/bin/env bash
# Run ffpipe as a pipeline of NUM_STAGES processes on this node, one stage (and one GPU) each.
#   launch/torchrun.sh NUM_STAGES [--config FILE] [--set section.key=value ...]
set -euo pipefail
n=${1:?usage: launch/torchrun.sh NUM_STAGES [--config FILE] [--set section.key=value ...]}
shift
exec "${PYTHON:-python3}" -m torch.distributed.run --standalone --nproc-per-node="$n" \
  -m ffpipe train --set pipeline.backend=torchrun --set pipeline.stages="$n" "$@"
