#!/usr/bin/env bash
# Start (or stop) a single-machine Ray head for `ray job submit`: GCS, raylet, workers, dashboard
# and Jobs API on 127.0.0.1 only, with Ray's token authentication on.
#   launch/ray_head.sh [start|stop] [extra `ray start` options, e.g. --num-gpus=4 --temp-dir=DIR]
# Ports: $RAY_PORT (GCS, default 6379), $DASHBOARD_PORT (dashboard and Jobs API, default 8265),
# $RAY_AGENT_PORT (the job agent; default a free one below the system's ephemeral range).
# Token: $RAY_AUTH_TOKEN, or the file $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token, which is
# generated (readable by you only) when none of them exists; launch/ray_submit.sh reads it there.
# Files: --temp-dir=DIR, else $RAY_TEMP_DIR, else Ray's default ($TMPDIR/ray, where
# `pipeline.address = "auto"` finds the head). `stop` ends only the heads this script started
# (ffpipe/backends/ray_nodes.py), never other Ray clusters on the machine.
# A head of several machines, and workers: launch/ray_cluster.sh.
set -euo pipefail
source "$(dirname "$0")/venv.sh"
repo=$(cd "$(dirname "$0")/.." && pwd)
action=${1:-start}
[ $# -gt 0 ] && shift
# Ray on Linux swaps a loopback node address for the routable one unless told this is a
# single-machine cluster: then GCS, raylet, workers and dashboard all stay on 127.0.0.1.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
case "$action" in
  start)
    need_ray
    # `ray start` turns token authentication on only when it finds a token (else it warns and
    # runs without): make one if there is none, private (umask), then require it.
    (umask 077 && ray get-auth-token --generate >/dev/null)
    export RAY_AUTH_MODE=token
    # The Jobs API reaches the head's agent on its listen port, 52365 by default; another Ray on
    # this machine (an ffpipe run's own local cluster) may hold that one, and then no job could
    # ever be submitted. A free port instead, below the system's ephemeral range so that no other
    # process is handed it before the agent binds it ($RAY_AGENT_PORT, or an option after these, wins).
    agent_port=${RAY_AGENT_PORT:-$(python3 "$repo/ffpipe/backends/ray_nodes.py" port)}
    temp=$(printf '%s\n' "$@" | sed -n 's/^--temp-dir=//p' | tail -n 1)
    temp_option=()
    if [ -z "$temp" ]; then
      temp=${RAY_TEMP_DIR:-${TMPDIR:-/tmp}/ray}
      temp_option=(--temp-dir="$temp")
    fi
    ray start --head --node-ip-address=127.0.0.1 --port="${RAY_PORT:-6379}" \
      --dashboard-agent-listen-port="$agent_port" \
      --dashboard-host=127.0.0.1 --dashboard-port="${DASHBOARD_PORT:-8265}" \
      --disable-usage-stats "${temp_option[@]}" "$@"
    python3 "$repo/ffpipe/backends/ray_nodes.py" record local "${RAY_PORT:-6379}" "$temp" "127.0.0.1:${RAY_PORT:-6379}" >/dev/null
    echo "stop this head: launch/ray_head.sh stop" ;;
  stop) exec python3 "$repo/ffpipe/backends/ray_nodes.py" stop local ;;
  *) echo "usage: launch/ray_head.sh [start|stop] [ray start options]" >&2; exit 2 ;;
esac
