#!/usr/bin/env bash
# Broker memory per idle MQTT connection.
#
# Usage: bench/measure-idle.sh [N=10000]
# Starts a release broker, reads its RSS at rest, opens N idle MQTT 5 connections with
# shardmq-bench (keep-alive 300 s, source addresses 127.0.0.2-127.0.0.20), reads the RSS again
# while all are connected, and prints (after - before) / N. Also prints the kernel's side:
# socket buffer pages (/proc/net/sockstat) and, when /proc/slabinfo is readable, the slab
# bytes of the socket objects (TCP, sock_inode_cache, filp, dentry) per socket.
# Both processes need N descriptors: this sandbox caps a process at 20,000.
# Env: BROKER_CPUS (e.g. 0) to run fewer broker shards, HOLD_SECS (default 10), BROKER_KIND
# (see bench/broker.sh: mosquitto, floor:HOLD), SKIP_BUILD=1 to use the binaries as built.
set -euo pipefail

N=${1:-10000}
HOLD_SECS=${HOLD_SECS:-10}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/shardmq-idle.XXXXXX)
# shellcheck source=bench/broker.sh
source "$ROOT/bench/broker.sh"
trap cleanup EXIT

if (( N + 100 > $(ulimit -n) )); then
  echo "N=$N needs more than the $(ulimit -n) open files this shell allows" >&2
  exit 1
fi

# Bytes of the slab caches that hold a socket's kernel objects; empty if unreadable.
socket_slab_bytes() {
  [[ -r /proc/slabinfo ]] || return 0
  awk '$1 == "TCP" || $1 == "sock_inode_cache" || $1 == "filp" || $1 == "dentry" {
         sum += $2 * $4 } END { print sum }' /proc/slabinfo
}

[[ -n "${SKIP_BUILD:-}" ]] || build
start_broker
sleep 2
rss_before=$(rss_kib "$BROKER_PID")
fds_before=$(fd_count "$BROKER_PID")
mem_before=$(sockstat_tcp mem)
inuse_before=$(sockstat_tcp inuse)
slab_before=$(socket_slab_bytes)

timeout $((HOLD_SECS + 180)) "$BENCH" conn -h 127.0.0.1 -p "$PORT" -c "$N" \
  --hold-secs "$HOLD_SECS" --ifaddr 127.0.0.2-127.0.0.20 >"$WORK/bench.log" 2>&1 &
BENCH_PID=$!
# A load generator still running a minute after its hold is stuck: keep its stacks for a look.
(
  sleep $((HOLD_SECS + 60))
  pid=$(pgrep -P "$BENCH_PID" -x shardmq-bench || true)
  if [[ -n "$pid" ]] && command -v gdb >/dev/null; then
    gdb -p "$pid" -batch -ex "thread apply all bt 40" >"$WORK/bench-stuck.bt" 2>&1 || true
    echo "shardmq-bench still running after its hold: stacks in $WORK/bench-stuck.bt" >&2
  fi
) &
WATCH_PID=$!
wait_for_line "^all $N attempted" "$WORK/bench.log" 150 || { cat "$WORK/bench.log" >&2; exit 1; }
check_broker
grep "^all $N attempted" "$WORK/bench.log"
# Sample while every connection is held; keep the largest.
rss_after=$(peak_rss_kib 5)
fds_after=$(fd_count "$BROKER_PID")
mem_after=$(sockstat_tcp mem)
inuse_after=$(sockstat_tcp inuse)
slab_after=$(socket_slab_bytes)

bench_rc=0
wait "$BENCH_PID" || bench_rc=$?
kill "$WATCH_PID" 2>/dev/null || true
if (( bench_rc != 0 )); then
  echo "shardmq-bench failed (exit $bench_rc):" >&2
  cat "$WORK/bench.log" >&2
  exit 1
fi
BENCH_PID=""
cat "$WORK/bench.log" | grep -E '^(summary|handshake|error)'
sleep 2
check_broker
rss_end=$(rss_kib "$BROKER_PID")

succ=$(sed -n 's/^summary: connect_succ=\([0-9]*\).*/\1/p' "$WORK/bench.log")
echo
echo "idle connections held: $succ of $N (broker fds $fds_before -> $fds_after)"
echo "broker RSS before: $((rss_before)) KiB, with $succ connected: $rss_after KiB," \
  "after they closed: $rss_end KiB"
if (( succ > 0 )); then
  echo "broker bytes per idle connection (RSS): $(( (rss_after - rss_before) * 1024 / succ ))"
  sockets=$(( inuse_after - inuse_before ))
  echo "kernel TCP sockets in use: $inuse_before -> $inuse_after (+$sockets: both ends)," \
    "socket buffer pages (sockstat mem): $mem_before -> $mem_after"
  if [[ -n "$slab_before" && -n "$slab_after" && $sockets -gt 0 ]]; then
    echo "kernel slab bytes per socket (TCP+sock_inode+filp+dentry, system-wide, approximate):" \
      "$(( (slab_after - slab_before) / sockets ))"
  fi
fi
warnings=$(grep -c . "$WORK/broker.log" || true)
echo "broker log lines (RUST_LOG=warn): $warnings${warnings:+ (see $WORK/broker.log)}"
