#!/usr/bin/env bash
# Why a broker's latency at a fixed offered load is what it is: counts, not times.
#
# Usage: bench/why-latency.sh [RATE] [SECONDS]   (defaults: 20000 msg/s, 6 s)
#
# For each broker (shardmq on 2 shards, shardmq on 1 shard, Mosquitto), runs one publisher →
# one subscriber, QoS 0, 64 B, at RATE msg/s, and while it runs counts with `perf stat` on the
# broker process: syscalls (all, and the ones that park or wake a thread), context switches
# and CPU migrations. Prints them per delivered message, with the bench's latency percentiles.
# Counts do not depend on how busy the machine is, so they explain the latency where timings
# alone are too noisy on a shared 2-core VM.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/shardmq-why.XXXXXX)
# shellcheck source=bench/broker.sh
source "$ROOT/bench/broker.sh"
trap cleanup EXIT

RATE=${1:-20000}
SECS=${2:-6}
EVENTS=raw_syscalls:sys_enter,context-switches,cpu-migrations,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,syscalls:sys_enter_write,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read

build
printf '| broker | msgs | p50 µs | p99 µs | syscalls/msg | io_uring_enter/msg | epoll_wait/msg | futex/msg | write+send/msg | read+recv/msg | ctx switches/msg |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|\n'
for kind in "shardmq 2 shards" "shardmq 1 shard" "mosquitto"; do
  use_broker "$kind"
  start_broker
  timeout 120 "$BENCH" pubsub -h 127.0.0.1 -p "$PORT" --pubs 1 --subs 1 -q 0 -s 64 \
    --rate "$RATE" --duration-secs "$SECS" --json >"$WORK/bench.json" 2>"$WORK/bench.err" &
  BENCH_PID=$!
  sleep 1
  # Count over the middle of the run, all threads of the broker.
  perf stat -x, -e "$EVENTS" -p "$BROKER_PID" -- sleep $((SECS - 2)) 2>"$WORK/perf.csv" || true
  wait "$BENCH_PID" || true
  BENCH_PID=""
  python3 - "$WORK/perf.csv" "$WORK/bench.json" "$kind" "$RATE" "$((SECS - 2))" "$ROOT/bench" <<'EOF'
import sys
sys.path.insert(0, sys.argv[6])
from perfstat import bench_summary, perf_counts
perf, bench, kind, rate, secs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
counts = perf_counts(perf)
b = bench_summary(bench)
lat = b.get("latency_us") or b.get("latency") or {}
msgs = rate * secs  # delivered during the counting window at the offered rate
per = lambda *names: sum(counts.get(n, 0) for n in names) / msgs
print(f"| {kind} | {msgs} | {lat.get('p50', '?')} | {lat.get('p99', '?')} | "
      f"{per('raw_syscalls:sys_enter'):.2f} | {per('syscalls:sys_enter_io_uring_enter'):.2f} | "
      f"{per('syscalls:sys_enter_epoll_wait'):.2f} | {per('syscalls:sys_enter_futex'):.2f} | "
      f"{per('syscalls:sys_enter_write', 'syscalls:sys_enter_sendto'):.2f} | "
      f"{per('syscalls:sys_enter_read', 'syscalls:sys_enter_recvfrom'):.2f} | "
      f"{per('context-switches'):.2f} |")
EOF
  cleanup
  BROKER_PID=""
done
