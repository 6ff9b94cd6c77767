#!/usr/bin/env bash
# A multi-node Ray cluster on this machine: a head and two worker nodes, each its own raylet
# with its own ports (as Ray's own multi-node tests run), each declaring what it is for:
#
#   head    head_node: 1   controller, HAProxy (:8000), ingress, rate limiter
#   llm     llm_node: 1    vLLM replicas (0.5 each: two share the node, like num_gpus: 0.5)
#   audio   audio_node: 1  Whisper replicas and the audio decode pool
#
#   cluster/local.sh up              start the three nodes (runs `make setup` first if needed)
#   cluster/local.sh deploy          `serve deploy` the plan of cluster/serve_config.local.yaml
#                                    (serve_app/plan.py), wait for /health
#   cluster/local.sh status          nodes, their resources, Serve's deployments
#   cluster/local.sh add-node KIND   start one more node of KIND (llm or audio), e.g. after a loss
#   cluster/local.sh down            stop every process `up` started (only those)
#
# Ports: GCS 6390, dashboard 8266, HTTP 8000; metrics per node on 8090 (head), 8091 (llm),
# 8092 (audio). Override with LOCAL_CLUSTER_* variables below. Ray's files stay under
# $LOCAL_CLUSTER_DIR (per user), so `down` finds exactly the processes of this cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=$ROOT/.venv/bin/python
RAY=$ROOT/.venv/bin/ray
SERVE=$ROOT/.venv/bin/serve
DIR=${LOCAL_CLUSTER_DIR:-/tmp/ray-openai-cluster-$(id -u)}
GCS_PORT=${LOCAL_CLUSTER_GCS_PORT:-6390}
DASHBOARD_PORT=${LOCAL_CLUSTER_DASHBOARD_PORT:-8266}
METRICS_PORT=${LOCAL_CLUSTER_METRICS_PORT:-8090}  # head; +1 llm, +2 audio, +3... added nodes
CONFIG=${LOCAL_CLUSTER_CONFIG:-cluster/serve_config.local.yaml}
HTTP=http://127.0.0.1:8000

export SERVE_APP_MODELS_DIR=${SERVE_APP_MODELS_DIR:-$ROOT/models}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 RAY_USAGE_STATS_ENABLED=0
export SERVE_APP_API_KEYS=${SERVE_APP_API_KEYS-}  # unset: no keys, as `make serve`
# HTTP through HAProxy (as serve_app.haproxy adjusts it) to the ingress replicas, and Ray's
# token authentication, as serve_app/launch.py (RAY_ENV): one token for every node and CLI
# call of this cluster (the dashboard's HTTP API wants it too:
# `Authorization: Bearer $(cat $DIR/auth_token)`).
export RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_HAPROXY_TUNE_BUFSIZE=131072 RAY_AUTH_MODE=token
# Less work while idle (as RAY_ENV too): Serve's control loop, its metrics flush, log monitor.
export RAY_SERVE_CONTROL_LOOP_INTERVAL_S=0.5 RAY_SERVE_METRICS_EXPORT_INTERVAL_MS=5000 RAY_LOG_MONITOR_MANY_FILES_THRESHOLD=0 LOG_NAME_UPDATE_INTERVAL_S=5
# A replica's code and its router on the replica's own event loop (as RAY_ENV too).
export RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0 RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0
export RAY_SERVE_HAPROXY_BINARY_PATH=$ROOT/.venv/bin/serve-app-haproxy RAY_AUTH_TOKEN_PATH=$DIR/auth_token

# Per kind: logical CPUs (reservations; the machine's cores are shared) and custom resources.
declare -A CPUS=([head]=2 [llm]=2 [audio]=2)
declare -A RESOURCES=([head]='{"head_node": 1}' [llm]='{"llm_node": 1}' [audio]='{"audio_node": 1}')
declare -A OFFSET=([head]=0 [llm]=1 [audio]=2)

log() { echo "==> [local cluster] $*"; }

ensure_setup() {
  if [ ! -x "$RAY" ] || [ ! -d "$SERVE_APP_MODELS_DIR" ]; then
    log "no virtualenv or models yet: make setup"
    make setup
  fi
}

start_node() {  # start_node KIND [METRICS_PORT]
  local kind=$1 port=${2:-$((METRICS_PORT + OFFSET[$1]))}
  log "starting $kind node (resources ${RESOURCES[$kind]}, metrics :$port)"
  # Each raylet on this machine needs ports of its own; 0 lets Ray pick free ones.
  "$RAY" start --address="127.0.0.1:$GCS_PORT" --node-ip-address=127.0.0.1 \
    --num-cpus="${CPUS[$kind]}" --resources="${RESOURCES[$kind]}" \
    --metrics-export-port="$port" --dashboard-agent-listen-port=0 \
    --object-store-memory=$((512 * 1024 * 1024)) \
    --disable-usage-stats >"$DIR/start-$kind-$port.log" 2>&1 \
    || { cat "$DIR/start-$kind-$port.log"; exit 1; }
}

up() {
  ensure_setup
  mkdir -p "$DIR"
  if [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then
    (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(32))' >"$RAY_AUTH_TOKEN_PATH")
  fi
  if "$RAY" status --address="127.0.0.1:$GCS_PORT" >/dev/null 2>&1; then
    log "already up (GCS :$GCS_PORT)"; return
  fi
  log "starting head node (GCS :$GCS_PORT, dashboard :$DASHBOARD_PORT, metrics :$METRICS_PORT)"
  "$RAY" start --head --port="$GCS_PORT" --node-ip-address=127.0.0.1 --temp-dir="$DIR" \
    --num-cpus="${CPUS[head]}" --resources="${RESOURCES[head]}" \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
    --metrics-export-port="$METRICS_PORT" --object-store-memory=$((512 * 1024 * 1024)) \
    --disable-usage-stats >"$DIR/start-head.log" 2>&1 \
    || { cat "$DIR/start-head.log"; exit 1; }
  start_node llm
  start_node audio
  log "up: dashboard http://127.0.0.1:$DASHBOARD_PORT; next: cluster/local.sh deploy"
}

deploy() {
  log "serve deploy the plan of $CONFIG (one application per model deployment)"
  "$PY" -m serve_app.plan "$CONFIG" >"$DIR/plan.yaml"
  "$SERVE" deploy "$DIR/plan.yaml" --address "http://127.0.0.1:$DASHBOARD_PORT"
  log "waiting for $HTTP/health (model replicas start in 1-3 minutes)"
  for _ in $(seq 1 360); do
    if curl -sf "$HTTP/health" >/dev/null; then log "ready: $HTTP"; return; fi
    sleep 1
  done
  curl -s "$HTTP/health" || true
  echo; log "not healthy after 6 minutes; see cluster/local.sh status"; exit 1
}

status() {
  "$RAY" status --address="127.0.0.1:$GCS_PORT"
  "$SERVE" status --address "http://127.0.0.1:$DASHBOARD_PORT" || true
}

descendants() {  # the given PIDs and every process below them
  local pid
  for pid in "$@"; do
    echo "$pid"
    descendants $(pgrep -P "$pid" || true)
  done
}

cluster_pids() {
  # The cluster's GCS, raylets and dashboard name $DIR (Ray's session directory lives there)
  # on their command lines; workers, agents and engines are their descendants. Ray's client
  # server outlives the `ray start` that started it: it names the GCS port. Nothing else on
  # this machine matches, so no other Ray is touched.
  local roots
  roots=$(pgrep -f -- "$DIR" || true; pgrep -f -- "ray.util.client.server --address=[^ ]*:$GCS_PORT" || true)
  [ -n "$roots" ] && descendants $roots | sort -un
}

alive() {  # the given PIDs that still run (zombies excluded)
  local pid
  for pid in "$@"; do
    if grep -qs '^State:[^Z]*$' "/proc/$pid/status"; then echo "$pid"; fi
  done
}

down() {
  local pids
  pids=$(cluster_pids)
  if [ -z "$pids" ]; then log "nothing running under $DIR"; return; fi
  log "stopping $(echo "$pids" | wc -w) processes"
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 1 20); do
    pids=$(alive $pids)
    [ -z "$pids" ] && { log "down"; return; }
    sleep 1
  done
  kill -KILL $pids 2>/dev/null || true
  log "down (after SIGKILL)"
}

case "${1:-}" in
  up) up ;;
  deploy) deploy ;;
  status) status ;;
  add-node) start_node "${2:?kind: llm or audio}" "${3:-}" ;;
  down) down ;;
  *) sed -n '2,18p' "$0"; exit 2 ;;
esac
