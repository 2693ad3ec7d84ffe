# Shared by the bench/cluster/*.sh scripts (sourced, not run): start cluster nodes on loopback
# addresses, wait for them, query their management API, and stop everything on exit.
# Expects ROOT (the repository) and WORK (a scratch directory) to be set.

BROKER="$ROOT/target/release/shardmq"
BENCH="$ROOT/target/release/shardmq-bench"
COOKIE="bench-cluster-cookie-0123456789"
PIDS=()            # every process this script started (killed by cleanup)
declare -A NODE_PID NODE_MQTT NODE_API NODE_QUIC NODE_DIR NODE_ROLE NODE_CPU

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
}

# What every script does first: stop everything on exit (and on Ctrl-C), build, say where
# the work directory is, describe the machine.
begin() {
  trap cleanup EXIT
  trap "exit 143" INT TERM
  build
  echo "work dir: $WORK" >&2
  machine
}

build() {
  if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo "building release binaries..." >&2
    (cd "$ROOT" && timeout -k 5 1800 cargo build --release -q -p shardmq -p shardmq-bench)
  fi
}

machine() {
  echo "nproc: $(nproc)"
  echo "kernel: $(uname -r)"
  lscpu | head -10
  echo "load before the run: $(cut -d" " -f1-3 /proc/loadavg) (other processes on this machine: see top)"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- shards src || echo " (+ uncommitted changes in shards/ or src/)")"
}

# A free TCP port on 127.0.0.1 and a free UDP port on $1.
free_tcp() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
free_udp() {
  python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"
}

# plan_node ID ROLE CPU: picks addresses for node ID (QUIC on 127.0.0.(10+ID)).
plan_node() {
  local id=$1
  NODE_ROLE[$id]=$2
  NODE_CPU[$id]=$3
  NODE_QUIC[$id]="127.0.0.$((10 + id)):$(free_udp "127.0.0.$((10 + id))")"
  NODE_MQTT[$id]=$(free_tcp)
  NODE_API[$id]=$(free_tcp)
  NODE_DIR[$id]="$WORK/node$id"
}

# seeds_of ID...: the "id@addr" list of the given cores.
seeds_of() {
  local out="" id
  for id in "$@"; do out+="${out:+,}$id@${NODE_QUIC[$id]}"; done
  echo "$out"
}

# start_node ID SEEDS: starts node ID (planned) with its data dir kept; log in $WORK/nodeID.log.
# Its storage.dir is its own, $WORK/nodeID/storage (the default, data, is locked by the first
# node that opens it: a second node on it would not start).
# Its one shard is pinned to its CPU (node.cpus). CONTROL_PIN=1 also pins its control thread
# (node.control_cpu: Raft, RLOG, forwarding, API) to that CPU; by default the control thread is
# not pinned: pinned on the shard's CPU, a publisher's connection can stall for good (see
# docs/cluster.md, "Found while measuring").
start_node() {
  local id=$1 seeds=$2
  mkdir -p "${NODE_DIR[$id]}"
  env RUST_LOG="${NODE_LOG:-warn,shardmq_cluster=info}" NO_COLOR=1 \
    SHARDMQ_LISTENER__BIND="127.0.0.1:${NODE_MQTT[$id]}" \
    SHARDMQ_API__LISTEN="127.0.0.1:${NODE_API[$id]}" \
    SHARDMQ_SYS__INTERVAL_MS=0 \
    SHARDMQ_NODE__CPUS="${NODE_CPU[$id]}" \
    SHARDMQ_NODE__CONTROL_CPU="$(if [[ "${CONTROL_PIN:-0}" == 1 ]]; then echo "${NODE_CPU[$id]}"; else echo none; fi)" \
    SHARDMQ_NODE__ROLE="${NODE_ROLE[$id]}" \
    SHARDMQ_CLUSTER__ENABLED=true \
    SHARDMQ_CLUSTER__NODE_ID="$id" \
    SHARDMQ_CLUSTER__LISTEN="${NODE_QUIC[$id]}" \
    SHARDMQ_CLUSTER__SEEDS="$seeds" \
    SHARDMQ_CLUSTER__COOKIE="$COOKIE" \
    SHARDMQ_CLUSTER__DATA_DIR="${NODE_DIR[$id]}" \
    SHARDMQ_STORAGE__DIR="${NODE_DIR[$id]}/storage" \
    "${NODE_ENV[@]}" \
    "$BROKER" >>"$WORK/node$id.log" 2>&1 &
  NODE_PID[$id]=$!
  PIDS+=("$!")
}
NODE_ENV=()

stop_node() {
  local id=$1 pid=${NODE_PID[$1]}
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

api() { curl -s --max-time 5 "http://127.0.0.1:${NODE_API[$1]}$2"; }

# wait_until SECS CMD...: runs CMD every 0.2 s until it succeeds; fails after SECS.
wait_until() {
  local secs=$1; shift
  local end=$((SECONDS + secs))
  until "$@"; do
    if ((SECONDS >= end)); then return 1; fi
    sleep 0.2
  done
}

has_leader() { [[ "$(api "$1" /api/v1/cluster | jq -r '.leader // empty' 2>/dev/null)" != "" ]]; }
all_normal() {
  [[ "$(api "$1" /api/v1/rlog | jq -r '[.shards[].state] | (length > 0 and all(. == "normal"))' 2>/dev/null)" == true ]]
}
routes_of() { api "$1" /api/v1/cluster | jq -r '.routes // 0'; }
leader_of() { api "$1" /api/v1/cluster | jq -r '.leader // empty'; }
# metric ID NAME: NAME (or NAME_total) from /metrics, summed over its labels; 0 if absent.
metric() {
  api "$1" /metrics | awk -v n="$2" '
    { k = $1; sub(/\{.*/, "", k) }
    k == n || k == n "_total" { s += $NF; found = 1 }
    END { printf "%d\n", found ? s : 0 }'
}
rss_kb() { awk '/VmRSS/ { print $2 }' "/proc/${NODE_PID[$1]}/status"; }
