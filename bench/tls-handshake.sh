#!/usr/bin/env bash
# Broker CPU per TLS handshake + CONNECT/CONNACK, shardmq and Mosquitto in the same run.
#
# Usage: bench/tls-handshake.sh [N=5000] [RATE=1000]
#
# For each broker: a CA and a server certificate for 127.0.0.1 (openssl; KEY=ec for ECDSA
# P-256, KEY=rsa for RSA 2048), the broker with a TLS listener (shardmq: [listener.tls];
# Mosquitto: a `listener` with cafile/certfile/keyfile), then `shardmq-bench conn --tls
# --cafile` opens N connections at RATE per second (each a full handshake: the bench turns TLS
# session resumption off) and holds them. The broker's CPU time (utime + stime from
# /proc/PID/stat) is read just before the first connection and as soon as the bench reports
# every connection attempted, less the broker's idle CPU over that time (measured for 2 s
# before); divided by N. The same over plain TCP gives the CONNECT-only cost, so the last
# column is what TLS adds.
#
# Knobs: KEY (ec|rsa), BROKERS ("shardmq mosquitto"), BROKER_CPUS (shardmq shards, e.g. 0),
# BENCH_CPUS (e.g. 1), SKIP_BUILD=1.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d /tmp/shardmq-tls-handshake.XXXXXX)"
# shellcheck source=bench/broker.sh
source "$ROOT/bench/broker.sh"
trap cleanup EXIT

N=${1:-5000}
RATE=${2:-1000}
KEY=${KEY:-ec}
BROKERS=${BROKERS:-"shardmq mosquitto"}
TCK=$(getconf CLK_TCK)

[[ "${SKIP_BUILD:-0}" == 1 ]] || build
if [[ " $BROKERS " == *" mosquitto "* ]] && ! command -v mosquitto >/dev/null; then
  echo "installing mosquitto (apt-get)..." >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >&2
fi

# ---- certificates -----------------------------------------------------------------------------
newkey() {
  if [[ "$KEY" == rsa ]]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null
  else
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
  fi
}
newkey "$WORK/ca.key"
openssl req -x509 -new -key "$WORK/ca.key" -days 2 -subj "/CN=shardmq bench CA" \
  -out "$WORK/ca.pem" 2>/dev/null
newkey "$WORK/server.key"
openssl req -new -key "$WORK/server.key" -subj "/CN=127.0.0.1" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
  >"$WORK/server.ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 2 -extfile "$WORK/server.ext" -out "$WORK/server.pem" 2>/dev/null
# Mosquitto drops to its own user before reading them: the scratch dir and the files must be
# readable to it (throwaway test keys).
chmod 755 "$WORK"
chmod 644 "$WORK"/*.pem "$WORK/server.key"

# ---- helpers ----------------------------------------------------------------------------------
# utime + stime of $1 in clock ticks (fields 14 and 15, counted after the ")" of comm).
cpu_ticks() {
  local stat
  stat=$(<"/proc/$1/stat")
  stat=${stat##*) }
  # shellcheck disable=SC2086
  set -- $stat
  echo $((${12} + ${13}))
}

wait_listen() {
  local port=$1
  for _ in $(seq 100); do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
      echo "broker exited at start-up:" >&2
      cat "$WORK/broker.log" >&2
      return 1
    fi
    [[ -n "$(ss -Htln "sport = :$port")" ]] && return 0
    sleep 0.1
  done
  echo "broker did not listen on $port within 10s:" >&2
  cat "$WORK/broker.log" >&2
  return 1
}

stop_broker() {
  kill "$BROKER_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$BROKER_PID" 2>/dev/null || true
  BROKER_PID=""
}

# Starts broker $1 with a plain port $PLAIN and a TLS port $TLSP.
start_tls_broker() {
  PLAIN=$(free_port)
  TLSP=$(free_port)
  while [[ "$TLSP" == "$PLAIN" ]]; do TLSP=$(free_port); done
  case "$1" in
    shardmq)
      env RUST_LOG=warn SHARDMQ_SYS__INTERVAL_MS=0 SHARDMQ_API__LISTEN= \
        SHARDMQ_LISTENER__BIND="127.0.0.1:$PLAIN" \
        SHARDMQ_LISTENER__TLS__BIND="127.0.0.1:$TLSP" \
        SHARDMQ_LISTENER__TLS__CERT_FILE="$WORK/server.pem" \
        SHARDMQ_LISTENER__TLS__KEY_FILE="$WORK/server.key" \
        ${BROKER_CPUS:+SHARDMQ_NODE__CPUS="$BROKER_CPUS"} \
        "$BROKER" >"$WORK/broker.log" 2>&1 &
      ;;
    mosquitto)
      cat >"$WORK/mosquitto.conf" <<EOF
per_listener_settings false
allow_anonymous true
max_connections -1
persistence false
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
listener $PLAIN 127.0.0.1
listener $TLSP 127.0.0.1
cafile $WORK/ca.pem
certfile $WORK/server.pem
keyfile $WORK/server.key
EOF
      mosquitto -c "$WORK/mosquitto.conf" >"$WORK/broker.log" 2>&1 &
      ;;
    *) echo "unknown broker $1" >&2; return 1 ;;
  esac
  BROKER_PID=$!
  wait_listen "$PLAIN"
  wait_listen "$TLSP"
}

# One measurement: broker CPU per connection over $1 (tcp|tls) to port $2. Prints
# "connect_succ cpu_ms us_per_conn secs".
measure() {
  local kind=$1 port=$2 flags=()
  [[ "$kind" == tls ]] && flags=(--tls --cafile "$WORK/ca.pem")
  local idle0 idle1 before after t0 t1 log="$WORK/bench-$kind.log"
  idle0=$(cpu_ticks "$BROKER_PID"); sleep 2; idle1=$(cpu_ticks "$BROKER_PID")
  before=$(cpu_ticks "$BROKER_PID")
  : >"$log"
  t0=$(date +%s.%N)
  "$BENCH" conn -h 127.0.0.1 -p "$port" -V 5 -c "$N" -R "$RATE" --hold-secs 600 \
    --prefix "hs-$kind" ${BENCH_CPUS:+--cpus "$BENCH_CPUS"} "${flags[@]}" >"$log" 2>&1 &
  BENCH_PID=$!
  while ! grep -q "^all $N attempted" "$log"; do
    if ! kill -0 "$BENCH_PID" 2>/dev/null; then
      echo "bench ended early:" >&2; cat "$log" >&2; return 1
    fi
    sleep 0.05
  done
  after=$(cpu_ticks "$BROKER_PID")
  t1=$(date +%s.%N)
  kill "$BENCH_PID" 2>/dev/null || true
  wait "$BENCH_PID" 2>/dev/null || true
  BENCH_PID=""
  local succ
  succ=$(sed -n "s/^all $N attempted in .*connect_succ=\([0-9]*\).*/\1/p" "$log")
  awk -v b="$before" -v a="$after" -v i0="$idle0" -v i1="$idle1" -v t0="$t0" -v t1="$t1" \
    -v tck="$TCK" -v n="${succ:-0}" 'BEGIN {
      secs = t1 - t0; idle = (i1 - i0) / 2.0 * secs;
      cpu = (a - b - idle) / tck; if (cpu < 0) cpu = 0;
      printf "%d %.0f %.1f %.2f\n", n, cpu * 1000, (n > 0 ? cpu * 1e6 / n : 0), secs }'
  sleep 1
}

# ---- the run ----------------------------------------------------------------------------------
echo "N=$N connections at $RATE/s, server key $KEY, clock tick 1/$TCK s, scratch $WORK" >&2
RESULTS="$WORK/results.txt"
: >"$RESULTS"
for broker in $BROKERS; do
  start_tls_broker "$broker"
  echo "$broker: pid $BROKER_PID, plain 127.0.0.1:$PLAIN, TLS 127.0.0.1:$TLSP" >&2
  read -r tcp_n tcp_ms tcp_us tcp_s < <(measure tcp "$PLAIN")
  stop_broker
  # A fresh broker for TLS, so the TCP connections held before cost nothing here.
  start_tls_broker "$broker"
  read -r tls_n tls_ms tls_us tls_s < <(measure tls "$TLSP")
  stop_broker
  echo "$broker $tcp_n $tcp_ms $tcp_us $tls_n $tls_ms $tls_us" >>"$RESULTS"
done

printf '\n| broker | TCP conns | broker CPU (ms) | µs/CONNECT | TLS conns | broker CPU (ms) | µs/(handshake+CONNECT) | TLS adds (µs) |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|\n'
while read -r b tn tms tus sn sms sus; do
  awk -v b="$b" -v tn="$tn" -v tms="$tms" -v tus="$tus" -v sn="$sn" -v sms="$sms" -v sus="$sus" \
    'BEGIN { printf "| %s | %d | %d | %.1f | %d | %d | %.1f | %.1f |\n", b, tn, tms, tus, sn, sms, sus, sus - tus }'
done <"$RESULTS"
echo
echo "server key: $KEY; $(openssl version); mosquitto $(mosquitto -h 2>/dev/null | sed -n 's/^mosquitto version //p' | head -1)"
