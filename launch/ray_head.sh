#!/usr/bin/env bash
# Start (or stop) a single-machine Ray head for `ray job submit`, bound to 127.0.0.1.
#   launch/ray_head.sh [start|stop] [extra `ray start` options, e.g. --num-gpus=4]
# The Jobs API and dashboard listen on 127.0.0.1:${DASHBOARD_PORT:-8265}. Ray 2.60 turns token
# authentication on; clients then need RAY_AUTH_MODE=token (launch/ray_submit.sh sets it).
set -euo pipefail
action=${1:-start}
[ $# -gt 0 ] && shift
# Ray on Linux swaps a loopback node address for the routable one unless told this is a
# single-machine cluster: then GCS, raylet, workers and dashboard all stay on 127.0.0.1.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
case "$action" in
  start)
    exec ray start --head --node-ip-address=127.0.0.1 --port="${RAY_PORT:-6379}" \
      --dashboard-host=127.0.0.1 --dashboard-port="${DASHBOARD_PORT:-8265}" \
      --disable-usage-stats "$@" ;;
  stop) exec ray stop "$@" ;;
  *) echo "usage: launch/ray_head.sh [start|stop] [ray start options]" >&2; exit 2 ;;
esac
