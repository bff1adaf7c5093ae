#!/usr/bin/env bash
# Submit an ffpipe training run to a Ray cluster with `ray job submit`.
#   launch/ray_submit.sh [--address URL] [ffpipe train options: --config FILE --set k=v ...]
# URL: $RAY_API_SERVER_ADDRESS, else http://127.0.0.1:8265 (a head from launch/ray_head.sh).
# This folder travels as the job's working directory; the run folder is written on the head at
# $RUN_DIR (default ./runs/ray-<time> under this folder's path), or with --set run.storage=URI
# (several nodes: a store every node reaches) at URI/$RUN_DIR (default URI/ray-<time>); it is
# named at the end.
set -euo pipefail
source "$(dirname "$0")/venv.sh"
need_ray
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
storage=$(printf '%s\n' "$@" | sed -n 's/^run\.storage=//p' | tail -n 1)
if [ -n "$storage" ]; then  # run.dir names the run inside the store
  run_dir=${RUN_DIR:-ray-$(date +%Y%m%d-%H%M%S)}
  where="${storage%/}/$run_dir"
else
  run_dir=${RUN_DIR:-$PWD/runs/ray-$(date +%Y%m%d-%H%M%S)}
  where=$run_dir
fi
excludes='{"excludes": [".venv", "runs", ".git", ".whl", ".devdata", "__pycache__", "*.egg-info"]}'
# A head that has just started answers "No available agent to submit job" until its job agent
# has registered (seconds; over a minute on a busy 2-core machine). No job was made then: try
# again, for $RAY_SUBMIT_WAIT_S seconds at most (default 180).
log=$(mktemp)
trap 'rm -f "$log"' EXIT
attempts=$(( ${RAY_SUBMIT_WAIT_S:-180} / 5 ))
[ "$attempts" -ge 1 ] || attempts=1
for attempt in $(seq "$attempts"); do
  status=0
  ray job submit --address "$address" --working-dir . --runtime-env-json "$excludes" -- \
    "${PYTHON_ON_HEAD:-python}" -m ffpipe train --set pipeline.backend=ray --set pipeline.address=auto \
    --set run.dir="$run_dir" "$@" 2>&1 | tee "$log" || status=$?
  grep -q "No available agent to submit job" "$log" && [ "$attempt" -lt "$attempts" ] || break
  echo "ray_submit.sh: the head's job agent is not up yet; trying again in 5 s" >&2
  sleep 5
done
if grep -q "No available agent to submit job" "$log"; then
  echo "ray_submit.sh: the head's job agent did not come up in the ${RAY_SUBMIT_WAIT_S:-180} s given" \
    "(RAY_SUBMIT_WAIT_S); nothing was submitted. Its log on the head: logs/dashboard_agent.log in Ray's session folder" \
    "(/tmp/ray/session_latest by default). 'address already in use' there means a port it needs is" \
    "taken (launch/ray_cluster.sh ports lists them; each can be set in the environment)" >&2
  exit 1
fi
[ "$status" -eq 0 ] || exit "$status"
echo "run folder: $where"
