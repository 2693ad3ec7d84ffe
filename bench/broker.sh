# Shared by the measure-*.sh scripts (sourced, not run): build, start and watch a broker.
# Expects ROOT (the repository) and WORK (a scratch directory) to be set.

BROKER=${BROKER:-"$ROOT/target/release/shardmq"}
BENCH="$ROOT/target/release/shardmq-bench"
CAPACITY="$ROOT/target/release/shardmq-capacity"
BROKER_PID=""
BENCH_PID=""

# Stops what the script started; installed as the EXIT trap.
cleanup() {
  local pid
  for pid in "$BENCH_PID" "$BROKER_PID"; do
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
}

build() {
  echo "building release binaries..." >&2
  (cd "$ROOT" && timeout 1800 cargo build --release -q -p shardmq -p shardmq-bench -p shardmq-capacity)
}

# A TCP port nobody listens on.
free_port() {
  local port
  for _ in $(seq 100); do
    port=$((18000 + RANDOM % 2000))
    if [[ -z "$(ss -Htln "sport = :$port")" ]]; then
      echo "$port"
      return 0
    fi
  done
  echo "no free port found" >&2
  return 1
}

# Starts the broker on 127.0.0.1:$PORT with $SYS publishing off, logging warnings to
# $WORK/broker.log; sets BROKER_PID. BROKER_CPUS (e.g. "0") pins it to fewer shards.
# BROKER_API (e.g. 127.0.0.1:18083) turns shardmq's management API on there (off by default).
# BROKER_KIND=mosquitto starts Debian's mosquitto instead (the peer in docs/performance.md),
# anonymous, no connection limit, persistence off; its log is $WORK/broker.log too.
# BROKER_KIND=flashmq starts FLASHMQ=path configured as bench/compare does (flashmq_conf).
# BROKER_KIND=rumqttd starts target/peers/bin/rumqttd (installed by bench/compare) configured
# as bench/compare does. BROKER_KIND=floor:HOLD starts `shardmq-capacity floor --hold HOLD` (glommio alone, on the
# broker's CPUs: see bench/capacity/src/floor.rs).
start_broker() {
  PORT=$(free_port)
  if [[ "${BROKER_KIND:-shardmq}" == rumqttd ]]; then
    rumqttd_config "$PORT" 20000 >"$WORK/rumqttd.toml"
    "$ROOT/target/peers/bin/rumqttd" -c "$WORK/rumqttd.toml" >"$WORK/broker.log" 2>&1 &
  elif [[ "${BROKER_KIND:-shardmq}" == floor:* ]]; then
    "$CAPACITY" floor --bind "127.0.0.1:$PORT" --hold "${BROKER_KIND#floor:}" \
      ${BROKER_CPUS:+--cpus "$BROKER_CPUS"} >"$WORK/broker.log" 2>&1 &
  elif [[ "${BROKER_KIND:-shardmq}" == flashmq ]]; then
    flashmq_conf "$PORT" >"$WORK/flashmq.conf"
    "${FLASHMQ:?BROKER_KIND=flashmq needs FLASHMQ=path/to/flashmq}" \
      --config-file "$WORK/flashmq.conf" >"$WORK/broker.log" 2>&1 &
  elif [[ "${BROKER_KIND:-shardmq}" == mosquitto ]]; then
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\npersistence false\nset_tcp_nodelay true\nlog_dest stderr\nlog_type error\nlog_type warning\n' \
      "$PORT" >"$WORK/mosquitto.conf"
    mosquitto -c "$WORK/mosquitto.conf" >"$WORK/broker.log" 2>&1 &
  else
    # Its own storage folder (storage.dir is locked by the process that uses it).
    local env=(RUST_LOG=warn SHARDMQ_LISTENER__BIND="127.0.0.1:$PORT" SHARDMQ_SYS__INTERVAL_MS=0 SHARDMQ_API__LISTEN="${BROKER_API:-}" SHARDMQ_STORAGE__DIR="$WORK/data")
    if [[ -n "${BROKER_CPUS:-}" ]]; then env+=(SHARDMQ_NODE__CPUS="$BROKER_CPUS"); fi
    env "${env[@]}" "$BROKER" >"$WORK/broker.log" 2>&1 &
  fi
  BROKER_PID=$!
  for _ in $(seq 100); do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
      echo "broker exited at start-up:" >&2
      cat "$WORK/broker.log" >&2
      return 1
    fi
    if [[ -n "$(ss -Htln "sport = :$PORT")" ]]; then
      echo "broker pid $BROKER_PID listening on 127.0.0.1:$PORT (log: $WORK/broker.log)" >&2
      return 0
    fi
    sleep 0.1
  done
  echo "broker did not listen on $PORT within 10s" >&2
  return 1
}

# FlashMQ's configuration as bench/compare runs it, for 127.0.0.1:$1: no persistence, one
# worker thread per CPU (FLASHMQ_THREADS), at most 10,000 QoS messages pending per client.
flashmq_conf() {
  cat <<EOF
thread_count ${FLASHMQ_THREADS:-$(nproc)}
allow_anonymous true
log_file $WORK/flashmq.file.log
log_level warning
max_qos_msg_pending_per_client 10000
max_qos_bytes_pending_per_client 10240000
rlimit_nofile 20000
listen {
  protocol mqtt
  inet_protocol ip4
  inet4_bind_address 127.0.0.1
  port $1
  tcp_nodelay true
}
EOF
}

# rumqttd's configuration as bench/compare runs it, for 127.0.0.1:$1 and at most $2
# connections: one v4 listener, inflight window 100, no connection delay.
rumqttd_config() {
  cat <<EOF
id = 0
[router]
id = 0
max_connections = $2
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$1"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 100
    dynamic_filters = true
EOF
}

# Sets (and exports) BROKER_KIND and BROKER_CPUS for a table label: "shardmq 2 shards" (CPUs
# 0-1), "shardmq 1 shard" (CPU 0), or any other BROKER_KIND as it is.
use_broker() {
  case "$1" in
    "shardmq 2 shards") BROKER_KIND=shardmq; BROKER_CPUS="0-1" ;;
    "shardmq 1 shard") BROKER_KIND=shardmq; BROKER_CPUS="0" ;;
    *) BROKER_KIND=$1; BROKER_CPUS="" ;;
  esac
  export BROKER_KIND BROKER_CPUS
}

# Fails if the broker died; prints its log.
check_broker() {
  if ! kill -0 "$BROKER_PID" 2>/dev/null; then
    echo "the broker (pid $BROKER_PID) died; its log:" >&2
    cat "$WORK/broker.log" >&2
    return 1
  fi
}

# Resident set of a process, in KiB.
rss_kib() {
  awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# Open descriptors of a process.
fd_count() {
  ls "/proc/$1/fd" | wc -l
}

# Waits up to $3 seconds for a line matching $1 in file $2.
wait_for_line() {
  local pattern=$1 file=$2 secs=$3
  for _ in $(seq $((secs * 10))); do
    if grep -q -- "$pattern" "$file" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "no line matching '$pattern' in $file within ${secs}s" >&2
  return 1
}

# Field of the TCP line of /proc/net/sockstat: inuse, tw, mem (pages).
sockstat_tcp() {
  awk -v f="$1" '$1 == "TCP:" { for (i = 2; i < NF; i += 2) if ($i == f) print $(i + 1) }' \
    /proc/net/sockstat
}

# The broker's largest RSS (KiB) over $1 samples a second apart; fails if the broker died.
peak_rss_kib() {
  local peak=0 rss
  for _ in $(seq "$1"); do
    sleep 1
    check_broker || return 1
    rss=$(rss_kib "$BROKER_PID")
    (( rss > peak )) && peak=$rss
  done
  echo "$peak"
}
