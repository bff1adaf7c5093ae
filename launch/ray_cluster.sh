#!/usr/bin/env bash
# A Ray cluster of several machines for `ray job submit` (launch/ray_submit.sh), with Ray's token
# authentication on. On a private network that every node and your machine reach:
#   launch/ray_cluster.sh head HEAD_IP [ray start options, e.g. --num-gpus=4]
#       the head; makes the token if there is none (~/.ray/auth_token, readable by you only)
#       and prints how a worker joins and how to submit
#   launch/ray_cluster.sh worker HEAD_IP [ray start options]      (on every other node)
#       joins the head with the token: $RAY_AUTH_TOKEN, or the file $RAY_AUTH_TOKEN_PATH, or
#       ~/.ray/auth_token (copy the head's there, mode 600)
#   launch/ray_cluster.sh stop [head|worker]
#       stops the head and/or worker that this script started on this machine, nothing else
#   launch/ray_cluster.sh ports          the ports to open between the nodes
# Each node's address: $NODE_IP (default: the head's HEAD_IP on the head, Ray's choice on a
# worker). Its files: $RAY_TEMP_DIR (default /tmp/ffpipe-ray-<uid>-<head|worker>).
# A whole cluster stops with `launch/ray_cluster.sh stop` on each of its machines.
set -euo pipefail
source "$(dirname "$0")/venv.sh"
repo=$(cd "$(dirname "$0")/.." && pwd)

# Every port a node listens on, in one place (each can be set in the environment). Open them on
# the private network only: GCS, dashboard/Jobs and client on the head from the workers and
# from where you submit; the rest on every node from every other node.
RAY_PORT=${RAY_PORT:-6379}                        # GCS (head)
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}            # dashboard and Jobs API (head): ray job submit
CLIENT_PORT=${CLIENT_PORT:-10001}                 # Ray Client (head)
NODE_MANAGER_PORT=${NODE_MANAGER_PORT:-6380}      # raylet
OBJECT_MANAGER_PORT=${OBJECT_MANAGER_PORT:-6381}  # object transfers between nodes
AGENT_GRPC_PORT=${AGENT_GRPC_PORT:-6382}          # dashboard agent (gRPC)
AGENT_HTTP_PORT=${AGENT_HTTP_PORT:-52365}         # dashboard agent (HTTP): job submission on the head
RUNTIME_ENV_PORT=${RUNTIME_ENV_PORT:-6383}        # runtime-env agent
METRICS_PORT=${METRICS_PORT:-6384}                # Prometheus metrics
WORKER_PORTS=${WORKER_PORTS:-10002-10999}         # workers and actors, one port each

ports() {
  cat <<EOF
head:       $RAY_PORT (GCS), $DASHBOARD_PORT (dashboard, Jobs API), $CLIENT_PORT (Ray Client)
every node: $NODE_MANAGER_PORT (raylet), $OBJECT_MANAGER_PORT (objects), $AGENT_GRPC_PORT, $AGENT_HTTP_PORT (agent), $RUNTIME_ENV_PORT (runtime env), $METRICS_PORT (metrics), $WORKER_PORTS (workers)
pipeline.transport = "p2p" also connects the stages directly: torch.distributed's store on stage 0's node (a free port chosen at start) and NCCL/gloo between neighbours; allow TCP between the nodes, or use pipeline.transport = "ray"
EOF
}

node_options() {  # the options every node of this script gets
  echo --node-manager-port="$NODE_MANAGER_PORT" --object-manager-port="$OBJECT_MANAGER_PORT" \
    --dashboard-agent-grpc-port="$AGENT_GRPC_PORT" --dashboard-agent-listen-port="$AGENT_HTTP_PORT" \
    --runtime-env-agent-port="$RUNTIME_ENV_PORT" --metrics-export-port="$METRICS_PORT" \
    --min-worker-port="${WORKER_PORTS%-*}" --max-worker-port="${WORKER_PORTS#*-}" --disable-usage-stats
}

temp_dir() { echo "${RAY_TEMP_DIR:-/tmp/ffpipe-ray-$(id -u)-$1}"; }

loopback() { case "$1" in 127.*|localhost) return 0 ;; *) return 1 ;; esac; }

have_token() {
  [ -n "${RAY_AUTH_TOKEN:-}" ] || [ -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]
}

record() {  # note the node's session, for `stop`
  python3 "$repo/ffpipe/backends/ray_nodes.py" record "$1" "$2" "$3" "$4" >/dev/null
}

start_head() {
  local head_ip=$1; shift
  local temp; temp=$(temp_dir head)
  # Ray on Linux swaps a loopback node address for the routable one unless told the cluster is
  # on one machine (a head on 127.0.0.1 takes workers of this machine only).
  if loopback "$head_ip"; then export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; fi
  if [ -n "${RAY_AUTH_TOKEN_PATH:-}" ] && [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then
    echo "ray_cluster.sh: RAY_AUTH_TOKEN_PATH names $RAY_AUTH_TOKEN_PATH, which is missing or empty:" \
      "put the token there, or unset it to make one in ~/.ray/auth_token" >&2
    exit 2
  fi
  if ! have_token; then  # private from the start: Ray would write it with the umask's mode
    (umask 077 && mkdir -p "$HOME/.ray" && ray get-auth-token --generate >/dev/null)
    echo "made the cluster's token: $HOME/.ray/auth_token (readable by you only)"
  fi
  export RAY_AUTH_MODE=token
  # shellcheck disable=SC2046
  ray start --head --node-ip-address="${NODE_IP:-$head_ip}" --port="$RAY_PORT" --temp-dir="$temp" \
    --dashboard-host="${NODE_IP:-$head_ip}" --dashboard-port="$DASHBOARD_PORT" \
    --ray-client-server-port="$CLIENT_PORT" $(node_options) "$@"
  record head "$RAY_PORT" "$temp" "$head_ip:$RAY_PORT"
  cat <<EOF

The head is up (files in $temp). On every worker node, with this repository and the same
Python, torch and Ray, copy the token there privately (or set RAY_AUTH_TOKEN) and join:
  scp -p ${RAY_AUTH_TOKEN_PATH:-~/.ray/auth_token} WORKER:.ray/auth_token
  launch/ray_cluster.sh worker $head_ip
Submit a run from a machine with the token:
  launch/ray_submit.sh --address http://$head_ip:$DASHBOARD_PORT --set pipeline.placement=SPREAD --set run.storage=URI ...
Stop this head: launch/ray_cluster.sh stop head   (ports to open: launch/ray_cluster.sh ports)
EOF
}

start_worker() {
  local head=$1; shift
  [[ "$head" == *:* ]] || head="$head:$RAY_PORT"
  if ! have_token; then
    echo "ray_cluster.sh: no token to join $head with: copy the head's ~/.ray/auth_token to" \
      "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token} here (chmod 600), or set RAY_AUTH_TOKEN" >&2
    exit 2
  fi
  local temp; temp=$(temp_dir worker)
  local ip=()
  if loopback "${head%:*}"; then  # a head on 127.0.0.1: a worker of this machine
    ip=(--node-ip-address="${NODE_IP:-127.0.0.1}")
  elif [ -n "${NODE_IP:-}" ]; then
    ip=(--node-ip-address="$NODE_IP")
  fi
  export RAY_AUTH_MODE=token
  # shellcheck disable=SC2046
  ray start --address="$head" "${ip[@]}" --temp-dir="$temp" $(node_options) "$@"
  record worker "$NODE_MANAGER_PORT" "$temp" "$head"
  echo "joined $head (files in $temp); stop this worker: launch/ray_cluster.sh stop worker"
}

action=${1:-}
[ $# -gt 0 ] && shift
case "$action" in
  head|worker)
    [ $# -ge 1 ] || { echo "usage: launch/ray_cluster.sh $action HEAD_IP [ray start options]" >&2; exit 2; }
    need_ray
    "start_$action" "$@" ;;
  stop)
    roles=("$@"); [ ${#roles[@]} -gt 0 ] || roles=(head worker)
    exec python3 "$repo/ffpipe/backends/ray_nodes.py" stop "${roles[@]}" ;;
  ports) ports ;;
  *) echo "usage: launch/ray_cluster.sh head HEAD_IP | worker HEAD_IP | stop [head|worker] | ports" >&2; exit 2 ;;
esac
