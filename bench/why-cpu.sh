#!/usr/bin/env bash
# What a broker spends per message at saturation: CPU time, syscalls, context switches.
#
# Usage: bench/why-cpu.sh              (BROKERS="shardmq flashmq" with FLASHMQ=path, else shardmq;
#                                      shardmq-1: shardmq on one shard, CPU 0)
# Knobs: QOS="0 1 2" (the rows: 1:1, N pairs, 16 B, at saturation), N=16, SECS=6, ROUNDS=2
# (brokers alternated within each round), BROKER=path (shardmq binary), SKIP_BUILD=1,
# RECORD=1 (also `perf record` each shardmq row into $WORK/perf-q$QOS-r$ROUND.data).
#
# For each row and broker, one publisher→subscriber run of shardmq-bench; `perf stat` counts on
# the broker process (all threads) over the middle SECS-2 seconds. Per message received:
# task-clock (CPU time of the broker), all syscalls, io_uring_enter, epoll_wait, futex,
# read/recv and write/send syscalls, context switches. The VM has no hardware counters, so
# CPU time is the cost measure; counts do not depend on how busy the machine is.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/shardmq-why-cpu.XXXXXX)
# shellcheck source=bench/broker.sh
source "$ROOT/bench/broker.sh"
trap cleanup EXIT

if [[ -n "${FLASHMQ:-}" ]]; then BROKERS=${BROKERS:-"shardmq flashmq"}; else BROKERS=${BROKERS:-shardmq}; fi
QOS=${QOS:-"0 1 2"}
N=${N:-16}
SECS=${SECS:-6}
ROUNDS=${ROUNDS:-2}
WINDOW=$((SECS - 2))
EVENTS=task-clock,raw_syscalls:sys_enter,context-switches,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg,syscalls:sys_enter_read,syscalls:sys_enter_readv,syscalls:sys_enter_recvfrom,syscalls:sys_enter_recvmsg

[[ -n "${SKIP_BUILD:-}" ]] || build
echo "work directory: $WORK" >&2
printf '| row | broker | round | msg/s received | broker CPU µs/msg | msg per CPU-s | syscalls/msg | io_uring_enter/msg | epoll_wait/msg | futex/msg | write+send/msg | read+recv/msg | ctx switches/msg |\n'
printf '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for q in $QOS; do
  for round in $(seq "$ROUNDS"); do
    for kind in $BROKERS; do
      case "$kind" in
        shardmq-1) use_broker "shardmq 1 shard" ;;
        *) use_broker "$kind" ;;
      esac
      start_broker >/dev/null
      timeout 120 "$BENCH" pubsub -h 127.0.0.1 -p "$PORT" --pubs "$N" --subs "$N" -t 'bench/%i' \
        -q "$q" -s 16 --duration-secs "$SECS" --json >"$WORK/bench.json" 2>"$WORK/bench.err" &
      BENCH_PID=$!
      sleep 1
      if [[ -n "${RECORD:-}" && "$kind" == shardmq* ]]; then
        perf record -q -F 2000 -g -p "$BROKER_PID" -o "$WORK/perf-q$q-r$round.data" -- sleep "$WINDOW" \
          2>/dev/null || true
        perf stat -x, -e "$EVENTS" -p "$BROKER_PID" -- sleep 0.1 2>/dev/null || true
        : >"$WORK/perf.csv"
      else
        perf stat -x, -e "$EVENTS" -p "$BROKER_PID" -- sleep "$WINDOW" 2>"$WORK/perf.csv" || true
      fi
      wait "$BENCH_PID" || true
      BENCH_PID=""
      check_broker
      python3 - "$WORK/perf.csv" "$WORK/bench.json" "$q" "$kind" "$round" "$SECS" "$WINDOW" "$ROOT/bench" <<'EOF'
import sys
sys.path.insert(0, sys.argv[8])
from perfstat import bench_summary, perf_counts
perf, bench, q, kind, rnd, secs, window = sys.argv[1:8]
secs, window = float(secs), float(window)
counts = perf_counts(perf)
summary = bench_summary(bench)
rate = float(summary.get("received", 0)) / secs
msgs = rate * window or 1.0  # received during the counting window, at the run's mean rate
per = lambda *names: sum(counts.get(n, 0) for n in names) / msgs
cpu_us = counts.get("task-clock", 0) * 1000 / msgs  # task-clock is in ms
print(f"| 1:1 QoS {q} 16 B | {kind} | {rnd} | {rate:,.0f} | {cpu_us:.2f} | "
      f"{(1e6 / cpu_us if cpu_us else 0):,.0f} | {per('raw_syscalls:sys_enter'):.2f} | "
      f"{per('syscalls:sys_enter_io_uring_enter'):.3f} | {per('syscalls:sys_enter_epoll_wait'):.3f} | "
      f"{per('syscalls:sys_enter_futex'):.3f} | "
      f"{per('syscalls:sys_enter_write', 'syscalls:sys_enter_writev', 'syscalls:sys_enter_sendto', 'syscalls:sys_enter_sendmsg'):.3f} | "
      f"{per('syscalls:sys_enter_read', 'syscalls:sys_enter_readv', 'syscalls:sys_enter_recvfrom', 'syscalls:sys_enter_recvmsg'):.3f} | "
      f"{per('context-switches'):.3f} |", flush=True)
EOF
      cleanup
      BROKER_PID=""
    done
  done
done
