#!/usr/bin/env bash
# Route visibility (issue 16, item 7): how long after a SUBSCRIBE arrives every shard routes its
# filter. shardmq holds the SUBACK until every shard acknowledged the route, so the SUBSCRIBE →
# SUBACK time seen by a client on loopback is that window plus one round trip: a publish sent
# by another client after it has the SUBACK reaches the subscriber; one sent before may miss it
# when publisher and subscriber sit on different shards. Measured idle and while publishers
# saturate the same shards (the case where a shard's turn is long).
#
# Usage: bench/route-visibility.sh
#   SHARDMQ=path      the broker binary (default target/release/shardmq; SKIP_BUILD=1 skips
#                     `cargo build --release`); several, space-separated, are measured in turn,
#                     ROUNDS times alternated (the before/after comparison of docs/ARCHITECTURE.md)
#   SHARDS=2          shards (node.cpus = 0..SHARDS-1)
#   SUBS=8 FILTERS=250  connections × filters each, one SUBSCRIBE in flight per connection
#   LOAD_PAIRS=16     publisher/subscriber pairs of the load (QoS 0, 16 B, as fast as they can)
#   ROUNDS=2
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SHARDS=${SHARDS:-2}
SUBS=${SUBS:-8}
FILTERS=${FILTERS:-250}
LOAD_PAIRS=${LOAD_PAIRS:-16}
ROUNDS=${ROUNDS:-2}
if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release -q -p shardmq -p shardmq-bench
fi
BENCH=$ROOT/target/release/shardmq-bench
BINARIES=${SHARDMQ:-$ROOT/target/release/shardmq}
WORK=$(mktemp -d)
BROKER_PID=
cleanup() {
  [[ -n "$BROKER_PID" ]] && kill "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
cpus=$(seq -s, 0 $((SHARDS - 1)))

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() {
  PORT=$(free_port)
  env RUST_LOG=warn SHARDMQ_LISTENER__BIND="127.0.0.1:$PORT" SHARDMQ_NODE__CPUS="$cpus" \
    SHARDMQ_SYS__INTERVAL_MS=0 SHARDMQ_API__LISTEN= SHARDMQ_STORAGE__DURABILITY=off \
    "$1" >"$WORK/broker.log" 2>&1 &
  BROKER_PID=$!
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "broker did not start:" >&2; cat "$WORK/broker.log" >&2; return 1
}

stop() { kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true; BROKER_PID=; }

storm() { # label
  "$BENCH" routes -h 127.0.0.1 -p "$PORT" -c "$SUBS" --filters "$FILTERS" --pipeline 1 \
    --filter "vis/%i/%f" --json 2>/dev/null | grep "\"summary\"" | tail -1 >"$WORK/storm.json"
  python3 - "$1" "$WORK/storm.json" <<'PY'
import json, sys
label, path = sys.argv[1], sys.argv[2]
s = json.load(open(path))
lat = s["suback_latency_us"]
print(f"| {label} | {s['subscribed']} | {lat.get('p50', 0):.0f} | {lat.get('p99', 0):.0f} | {lat.get('max', 0):.0f} |")
PY
}

echo "| broker, load | SUBACKs | p50 µs | p99 µs | max µs |"
echo "|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  for bin in $BINARIES; do
    name="$(basename "$(dirname "$(dirname "$(dirname "$bin")")")")"
    start "$bin"
    storm "$name idle (round $round)"
    "$BENCH" pubsub -h 127.0.0.1 -p "$PORT" --pubs "$LOAD_PAIRS" --subs "$LOAD_PAIRS" \
      -t 'load/%i' -q 0 -s 16 --duration-secs 30 --json >/dev/null 2>&1 &
    load=$!
    sleep 2
    storm "$name loaded (round $round)"
    kill "$load" 2>/dev/null; wait "$load" 2>/dev/null || true
    stop
  done
done
