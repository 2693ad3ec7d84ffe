#!/usr/bin/env bash
# Real TCP connections at the largest count one process may hold here, for docs/capacity.md.
#
# Usage: bench/capacity/measure-tcp.sh [N_PER_CLIENT=9700] [CLIENTS=2]
# Starts the release broker (2 shards, $SYS off), reads its RSS and the kernel's TCP figures at
# rest, then runs CLIENTS `shardmq-bench conn` processes of N_PER_CLIENT idle MQTT 5 connections
# each (keep-alive 300 s, source addresses spread over 127.0.0.2-127.0.0.60), samples while all
# are held and prints: broker RSS per connection, kernel memory per socket (sockstat mem pages,
# slab of TCP/sock_inode_cache/filp/dentry/kmalloc when /proc/slabinfo is readable, and
# MemAvailable/Slab/SUnreclaim from /proc/meminfo), and the connect rate of each client.
# The broker needs one descriptor per connection and this sandbox caps a process at 20,000, so
# CLIENTS * N_PER_CLIENT must stay under ~19,500. Uses the binaries as built
# (BUILD=1 rebuilds them: cargo build --release -p shardmq -p shardmq-bench).
set -euo pipefail

N=${1:-9700}
CLIENTS=${2:-2}
HOLD_SECS=${HOLD_SECS:-60}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=$(mktemp -d /tmp/shardmq-capacity-tcp.XXXXXX)
# shellcheck source=bench/broker.sh
source "$ROOT/bench/broker.sh"
BENCH_PIDS=()
cleanup_all() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  cleanup
}
trap cleanup_all EXIT

TOTAL=$((N * CLIENTS))
if [[ "${BUILD:-0}" == 1 ]]; then build; fi

meminfo_kib() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
slab_bytes() {
  [[ -r /proc/slabinfo ]] || return 0
  awk '$1 == "TCP" || $1 == "sock_inode_cache" || $1 == "filp" || $1 == "dentry" ||
       $1 ~ /^kmalloc-/ || $1 == "eventpoll_epi" || $1 == "skbuff_head_cache" {
         sum += $3 * $4 } END { print sum }' /proc/slabinfo
}

start_broker
sleep 2
rss_before=$(rss_kib "$BROKER_PID")
fds_before=$(fd_count "$BROKER_PID")
inuse_before=$(sockstat_tcp inuse)
mem_before=$(sockstat_tcp mem)
slab_before=$(meminfo_kib Slab)
sunrec_before=$(meminfo_kib SUnreclaim)
avail_before=$(meminfo_kib MemAvailable)
slabinfo_before=$(slab_bytes)

# Client i uses its own slice of 127.0.0.2-127.0.0.60 so the two never compete for ports.
start=$(date +%s.%N)
for i in $(seq 0 $((CLIENTS - 1))); do
  lo=$((2 + i * 59 / CLIENTS)); hi=$((1 + (i + 1) * 59 / CLIENTS))
  timeout $((HOLD_SECS + 300)) "$BENCH" conn -h 127.0.0.1 -p "$PORT" -c "$N" \
    --hold-secs "$HOLD_SECS" --prefix "cap$i" --ifaddr "127.0.0.$lo-127.0.0.$hi" >"$WORK/bench$i.log" 2>&1 &
  BENCH_PIDS+=($!)
done
for i in $(seq 0 $((CLIENTS - 1))); do
  wait_for_line "^all $N attempted" "$WORK/bench$i.log" 280 || { cat "$WORK/bench$i.log" >&2; exit 1; }
done
ready=$(date +%s.%N)
check_broker
rss_after=$(peak_rss_kib 5)
fds=$(fd_count "$BROKER_PID")
inuse_after=$(sockstat_tcp inuse)
mem_after=$(sockstat_tcp mem)
slab_after=$(meminfo_kib Slab)
sunrec_after=$(meminfo_kib SUnreclaim)
avail_after=$(meminfo_kib MemAvailable)
slabinfo_after=$(slab_bytes)
grep -h '' /proc/"$BROKER_PID"/status | grep -E '^(VmRSS|RssAnon|RssFile|VmHWM)' || true

rc=0
for pid in "${BENCH_PIDS[@]}"; do wait "$pid" || rc=$?; done
BENCH_PIDS=()
for i in $(seq 0 $((CLIENTS - 1))); do
  echo "--- client $i"; grep -E '^(all|summary|handshake|connect|rate|error)' "$WORK/bench$i.log" || cat "$WORK/bench$i.log"
  if grep -q '^error' "$WORK/bench$i.log"; then echo "client $i saw errors: figures are not of $N held connections" >&2; rc=1; fi
done
(( rc == 0 )) || { echo "a shardmq-bench exited $rc" >&2; exit 1; }

succ=0
for i in $(seq 0 $((CLIENTS - 1))); do
  s=$(sed -n 's/^summary: connect_succ=\([0-9]*\).*/\1/p' "$WORK/bench$i.log")
  succ=$((succ + ${s:-0}))
done
sockets=$((inuse_after - inuse_before))
echo
held=$((fds - fds_before))
echo "connections held: $succ of $TOTAL connected, $held held by the broker while sampling"
if (( held < succ * 99 / 100 )); then
  echo "fewer than 99% held while sampling (a client finished early?): raise HOLD_SECS" >&2
  exit 1
fi
echo "wall time from start to all attempted: $(echo "$ready - $start" | bc) s" \
  "(~$(echo "$succ / ($ready - $start)" | bc) conn/s including process start)"
echo "broker RSS: $rss_before KiB at rest, $rss_after KiB with $succ connected"
if (( succ > 0 )); then
  echo "broker bytes per connection (RSS): $(( (rss_after - rss_before) * 1024 / held ))"
  echo "TCP sockets in use: $inuse_before -> $inuse_after (+$sockets, both loopback ends)"
  echo "sockstat mem pages: $mem_before -> $mem_after"
  echo "meminfo Slab: $slab_before -> $slab_after KiB, per socket:" \
    "$(( (slab_after - slab_before) * 1024 / sockets )) B; per connection (both ends):" \
    "$(( (slab_after - slab_before) * 1024 / succ )) B"
  echo "meminfo SUnreclaim: $sunrec_before -> $sunrec_after KiB, per connection (both ends):" \
    "$(( (sunrec_after - sunrec_before) * 1024 / succ )) B"
  echo "MemAvailable drop per connection (broker + clients + kernel, both ends):" \
    "$(( (avail_before - avail_after) * 1024 / succ )) B"
  if [[ -n "$slabinfo_before" && -n "$slabinfo_after" ]]; then
    echo "slabinfo (TCP+sock_inode+filp+dentry+kmalloc+epoll+skb) per socket:" \
      "$(( (slabinfo_after - slabinfo_before) / sockets )) B"
  fi
fi
