#!/usr/bin/env bash
# The image's entry point: one container plays one role of docker/compose.yaml.
#   head [ray start options]          Ray head on the compose network; dashboard and Jobs API :8265
#   worker [ray start options]        a Ray worker node that joins $FFPIPE_RAY_HEAD (one GPU each)
#   submit [ffpipe train options]     wait for $FFPIPE_WORKERS workers, then `ray job submit` a run
#   torchrun N [ffpipe train options] all N stages in this container, one GPU each
#   help                              this text; anything else runs as a command (e.g. ffpipe eval)
# Ray's token authentication is on: the head writes a random token to $RAY_AUTH_TOKEN_PATH (a
# volume the services share) unless RAY_AUTH_TOKEN is set; the others wait for that file.
# Run folders go to $RUN_DIR, default /runs/<role>-<time> (a volume on the host).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
role=${1:-help}
[ $# -gt 0 ] && shift
head_host=${FFPIPE_RAY_HEAD:-ray-head}
gcs_port=${FFPIPE_RAY_PORT:-6379}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-/ray-auth/token}
stamp=$(date +%Y%m%d-%H%M%S)

say() { echo "docker_entry ($role): $*" >&2; }

write_token() {
  if [ -n "${RAY_AUTH_TOKEN:-}" ] || [ -s "$RAY_AUTH_TOKEN_PATH" ]; then return; fi
  (umask 077 && python -c "import secrets; print(secrets.token_hex(32))" > "$RAY_AUTH_TOKEN_PATH.tmp")
  mv "$RAY_AUTH_TOKEN_PATH.tmp" "$RAY_AUTH_TOKEN_PATH"
  say "wrote a new cluster token to $RAY_AUTH_TOKEN_PATH"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: retry COMMAND once a second until it succeeds
  local limit=$1 what=$2; shift 2
  for _ in $(seq "$limit"); do
    if "$@" 2>/dev/null; then return 0; fi
    sleep 1
  done
  "$@" || true  # once more, its errors shown
  say "gave up after ${limit}s waiting for $what"; exit 1
}

need_writable() {  # a host folder that Docker created for a volume belongs to root
  [ -w "$1" ] && return
  say "$1 is not writable by uid $(id -u): create the host folder (FFPIPE_RUNS, default runs/)" \
    "yourself, or build the image with FFPIPE_UID=\$(id -u)"
  exit 1
}

token_ready() { [ -n "${RAY_AUTH_TOKEN:-}" ] || [ -s "$RAY_AUTH_TOKEN_PATH" ]; }
gcs_open() { (exec 3<>"/dev/tcp/$head_host/$gcs_port") 2>/dev/null; }
workers_alive() {  # the head plus $FFPIPE_WORKERS worker nodes are alive
  python - "$1" "${FFPIPE_WORKERS:-1}" <<'EOF'
import sys
from ray.util.state import list_nodes
alive = list_nodes(address=sys.argv[1], filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
sys.exit(0 if len(alive) >= 1 + int(sys.argv[2]) else 1)
EOF
}

case "$role" in
  head)
    need_writable /runs  # the job's driver writes the run folder here
    write_token
    exec ray start --head --port="$gcs_port" --dashboard-host=0.0.0.0 --dashboard-port=8265 \
      --num-cpus=0 --num-gpus=0 --disable-usage-stats --block "$@" ;;
  worker)
    wait_for 300 "the token in $RAY_AUTH_TOKEN_PATH" token_ready
    wait_for 300 "the Ray head at $head_host:$gcs_port" gcs_open
    exec ray start --address="$head_host:$gcs_port" --disable-usage-stats --block "$@" ;;
  submit)
    api="http://$head_host:8265"
    wait_for 300 "the token in $RAY_AUTH_TOKEN_PATH" token_ready
    wait_for 300 "${FFPIPE_WORKERS:-1} workers at $api (--profile gpu or cpu?)" workers_alive "$api"
    export RAY_API_SERVER_ADDRESS=$api RUN_DIR=${RUN_DIR:-/runs/ray-$stamp} PYTHON_ON_HEAD=python
    exec bash "$here/ray_submit.sh" --set pipeline.placement=SPREAD "$@" ;;
  torchrun)
    n=${1:?usage: docker_entry.sh torchrun NUM_STAGES [ffpipe train options]}
    shift
    need_writable "$(dirname "${RUN_DIR:-/runs/x}")"
    PYTHON=python exec bash "$here/torchrun.sh" "$n" --set run.dir="${RUN_DIR:-/runs/torchrun-$stamp}" "$@" ;;
  help|-h|--help)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' ;;
  *)
    exec "$role" "$@" ;;
esac
