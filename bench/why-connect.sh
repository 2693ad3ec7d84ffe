#!/usr/bin/env bash
# Why a broker accepts connections at the rate it does: work per connection, counted.
#
# Usage: bench/why-connect.sh [CONNECTIONS]   (default 10000)
#
# For each broker (shardmq on 2 shards, shardmq on 1 shard, Mosquitto), opens CONNECTIONS MQTT
# 3.1.1 connections as fast as the bench allows (`shardmq-bench conn`), and counts on the broker
# process with `perf stat`: CPU time, syscalls, io_uring_enter, accept, context switches and
# page faults, per connection, next to the connect rate. Counts do not depend on how busy the
# machine is.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/shardmq-why-connect.XXXXXX)
# shellcheck source=bench/broker.sh
source "$ROOT/bench/broker.sh"
trap cleanup EXIT

N=${1:-10000}
EVENTS=task-clock,raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_accept4,syscalls:sys_enter_epoll_wait,context-switches,page-faults

build
printf '| broker | connections | conn/s | CPU µs/conn | syscalls/conn | io_uring_enter/conn | accept4/conn | epoll_wait/conn | ctx switches/conn | page faults/conn |\n'
printf '|---|---|---|---|---|---|---|---|---|---|\n'
for kind in "shardmq 2 shards" "shardmq 1 shard" "mosquitto"; do
  use_broker "$kind"
  start_broker
  perf stat -x, -e "$EVENTS" -p "$BROKER_PID" -o "$WORK/perf.csv" &
  PERF_PID=$!
  sleep 0.5
  timeout 120 "$BENCH" conn -h 127.0.0.1 -p "$PORT" -V 4 -c "$N" --hold-secs 1 --json \
    >"$WORK/bench.json" 2>"$WORK/bench.err" || true
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  python3 - "$WORK/perf.csv" "$WORK/bench.json" "$kind" "$N" "$ROOT/bench" <<'EOF'
import sys
sys.path.insert(0, sys.argv[5])
from perfstat import bench_summary, perf_counts
perf, bench, kind, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
counts = perf_counts(perf)
b = bench_summary(bench, lambda o: o.get("summary") or o.get("command") == "conn")
rate = b.get("connect_rate") or b.get("conn_rate") or b.get("rate") or "?"
if isinstance(rate, float):
    rate = f"{rate:,.0f}"
per = lambda name: counts.get(name, 0) / n
print(f"| {kind} | {n} | {rate} | {per('task-clock') * 1000:.1f} | {per('raw_syscalls:sys_enter'):.1f} | "
      f"{per('syscalls:sys_enter_io_uring_enter'):.1f} | {per('syscalls:sys_enter_accept4'):.2f} | "
      f"{per('syscalls:sys_enter_epoll_wait'):.2f} | {per('context-switches'):.2f} | {per('page-faults'):.2f} |")
EOF
  cleanup
  BROKER_PID=""
done
