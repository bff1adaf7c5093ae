#!/usr/bin/env bash
# Submit an ffpipe training run to a Ray cluster with `ray job submit`.
#   launch/ray_submit.sh [--address URL] [ffpipe train options: --config FILE --set k=v ...]
# URL: $RAY_API_SERVER_ADDRESS, else http://127.0.0.1:8265 (a head from launch/ray_head.sh).
# This folder travels as the job's working directory; the run folder is written on the head at
# $RUN_DIR (default ./runs/ray-<time> under this folder's path) and named at the end.
set -euo pipefail
address=${RAY_API_SERVER_ADDRESS:-http://127.0.0.1:8265}
if [ "${1:-}" = "--address" ]; then address=$2; shift 2; fi
# The head requires Ray's token (launch/ray_head.sh made it): in token mode the CLI sends
# $RAY_AUTH_TOKEN, or the file $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token. Fail early if none.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [ "$RAY_AUTH_MODE" = token ] && ! ray get-auth-token >/dev/null 2>&1; then
  echo "ray_submit.sh: no Ray token here: start the head with launch/ray_head.sh on this machine," \
    "or set RAY_AUTH_TOKEN to the head's token (\`ray get-auth-token\` on the head)" >&2
  exit 2
fi
run_dir=${RUN_DIR:-$PWD/runs/ray-$(date +%Y%m%d-%H%M%S)}
excludes='{"excludes": [".venv", "runs", ".git", ".whl", ".devdata", "__pycache__", "*.egg-info"]}'
ray job submit --address "$address" --working-dir . --runtime-env-json "$excludes" -- \
  "${PYTHON_ON_HEAD:-python}" -m ffpipe train --set pipeline.backend=ray --set pipeline.address=auto \
  --set run.dir="$run_dir" "$@"
echo "run folder: $run_dir"
