#!/usr/bin/env bash
# Bootstrap time for ROUTES (default 1,000,000) routes: a single core (node 1, CPU 0) gets
# CONNS x FILTERS subscriptions through MQTT (held open, so the routes stay); then a fresh
# replicant (node 2, CPU 1, empty data dir) joins: bootstrap_time_ms and bootstrap_keys per
# shard, its RSS, and the time from its start to `normal` on every shard. Then the replicant is
# stopped (SIGTERM: it saves its tables) and restarted on its data dir: it must resume
# (bootstraps 0, resumes >= 1); the time to `normal` again is reported.
#   bench/cluster/bootstrap.sh              # CONNS=1000 FILTERS=1000
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/shardmq-boot.XXXXXX)
CONNS=${CONNS:-1000}
FILTERS=${FILTERS:-1000}
PIPELINE=${PIPELINE:-16}
TOTAL=$((CONNS * FILTERS))
source "$ROOT/bench/cluster/common.sh"
begin

plan_node 1 core 0
plan_node 2 replicant 1
SEEDS=$(seeds_of 1)
start_node 1 "$SEEDS"
wait_until 60 has_leader 1 || { echo "no leader" >&2; exit 1; }
echo "filling $TOTAL routes through MQTT on core 1 ($CONNS x $FILTERS)"
t0=$(date +%s.%N)
timeout -k 5 1200 "$BENCH" routes -h 127.0.0.1 -p "${NODE_MQTT[1]}" -c "$CONNS" --filters "$FILTERS" \
  --pipeline "$PIPELINE" --filter 'boot/%i/%f' --hold-secs 1200 --json \
  >"$WORK/fill.json" 2>"$WORK/fill.err" &
PIDS+=("$!")
wait_until 1200 grep -q summary "$WORK/fill.json"
echo "fill: $(grep summary "$WORK/fill.json")"
wait_until 120 bash -c "[[ \$(curl -s http://127.0.0.1:${NODE_API[1]}/api/v1/cluster | jq .routes) -ge $TOTAL ]]"
echo "core 1: routes $(routes_of 1), RSS $(rss_kb 1) kB, fill took $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s"
sleep 2

# A fresh replicant.
rm -rf "${NODE_DIR[2]}"
b0=$(date +%s.%N)
start_node 2 "$SEEDS"
wait_until 600 all_normal 2 || { echo "replicant 2 not normal" >&2; api 2 /api/v1/rlog >&2; exit 1; }
b1=$(date +%s.%N)
echo "fresh replicant: normal $(python3 -c "print(round(($b1-$b0)*1000))") ms after start (process start included)"
echo "fresh replicant routes $(routes_of 2), RSS $(rss_kb 2) kB"
api 2 /api/v1/rlog | jq -c '.shards[] | {shard, state, seq, bootstrap_time_ms, bootstrap_keys, bootstraps, resumes, replay_queue_len}'
sleep 3   # let it persist its snapshot once (replica_persist_ms = 1000)
ls -l "${NODE_DIR[2]}"

# Restart on its data dir.
stop_node 2
r0=$(date +%s.%N)
start_node 2 "$SEEDS"
wait_until 600 all_normal 2 || { echo "restarted replicant 2 not normal" >&2; api 2 /api/v1/rlog >&2; exit 1; }
r1=$(date +%s.%N)
echo "restarted replicant: normal $(python3 -c "print(round(($r1-$r0)*1000))") ms after start"
echo "restarted replicant routes $(routes_of 2), RSS $(rss_kb 2) kB"
api 2 /api/v1/rlog | jq -c '.shards[] | {shard, state, seq, bootstrap_time_ms, bootstrap_keys, bootstraps, resumes}'
grep -E "replica loaded|resum|bootstrap" "$WORK/node2.log" | tail -12 || true
