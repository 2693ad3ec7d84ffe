#!/usr/bin/env bash
# Replication lag under a route storm: CONNS connections x FILTERS distinct filters subscribed
# on replicant 4 of a 3-core + 2-replicant cluster (TOPOLOGY=3+2, or 1+2), each broker on one
# CPU. Samples the route shard's seq on the leader core and on replicant 5 every INTERVAL_MS;
# reports the storm, SUBACK latency, replicant 5's lag, when every node converged, and raft
# write batching (shardmq_cluster_writes / write_ops on node 4).
#   bench/cluster/route-storm.sh            # CONNS=1000 FILTERS=100 PIPELINE=8
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/shardmq-storm.XXXXXX)
CONNS=${CONNS:-1000}
FILTERS=${FILTERS:-100}
PIPELINE=${PIPELINE:-8}
INTERVAL_MS=${INTERVAL_MS:-50}
TOPOLOGY=${TOPOLOGY:-3+2}
TOTAL=$((CONNS * FILTERS))
source "$ROOT/bench/cluster/common.sh"
begin

# Nodes: cores 1..C, replicants 4 and 5; CPUs alternate 0/1.
if [[ "$TOPOLOGY" == 1+2 ]]; then CORES=(1); else CORES=(1 2 3); fi
cpu=0
for id in "${CORES[@]}"; do plan_node "$id" core "$cpu"; cpu=$((1 - cpu)); done
plan_node 4 replicant 1
plan_node 5 replicant 0
SEEDS=$(seeds_of "${CORES[@]}")
NODE_ENV=(SHARDMQ_CLUSTER__HEARTBEAT_MS=100 SHARDMQ_CLUSTER__ELECTION_TIMEOUT_MS=1000)
for id in "${CORES[@]}" 4 5; do start_node "$id" "$SEEDS"; done
wait_until 60 has_leader 1 || { echo "no leader" >&2; tail -20 "$WORK"/node1.log >&2; exit 1; }
wait_until 60 all_normal 4 && wait_until 60 all_normal 5 || { echo "replicants not normal" >&2; exit 1; }
LEADER=$(leader_of 1)
echo "cluster: cores ${CORES[*]} (leader $LEADER), replicants 4 5; storm of $CONNS x $FILTERS on node 4"
sleep 1

ALL=""
for id in "${CORES[@]}" 4 5; do ALL+="${ALL:+,}127.0.0.1:${NODE_API[$id]}"; done
python3 "$ROOT/bench/cluster/sample_rlog.py" --leader "127.0.0.1:${NODE_API[$LEADER]}" \
  --follower "127.0.0.1:${NODE_API[5]}" --all "$ALL" --routes "$TOTAL" \
  --interval-ms "$INTERVAL_MS" --timeout-s 600 --out "$WORK/samples.jsonl" >"$WORK/sampler.json" &
SAMPLER=$!
PIDS+=("$SAMPLER")
w0=$(metric 4 shardmq_cluster_writes); o0=$(metric 4 shardmq_cluster_write_ops)
timeout -k 5 900 "$BENCH" routes -h 127.0.0.1 -p "${NODE_MQTT[4]}" -c "$CONNS" --filters "$FILTERS" \
  --pipeline "$PIPELINE" --filter 'storm/%i/%f' --hold-secs 600 --json \
  >"$WORK/storm.json" 2>"$WORK/storm.err" &
STORM=$!
PIDS+=("$STORM")
# The summary line comes when the last SUBACK is in; the bench then holds the connections.
wait_until 900 grep -q summary "$WORK/storm.json"
w1=$(metric 4 shardmq_cluster_writes); o1=$(metric 4 shardmq_cluster_write_ops)
wait "$SAMPLER" || true
STORM_J=$(grep summary "$WORK/storm.json")
SAMPLE_J=$(cat "$WORK/sampler.json")
echo "storm:   $STORM_J"
echo "sampler: $SAMPLE_J"
routes_now=""
for id in "${CORES[@]}" 4 5; do routes_now+="node$id=$(routes_of "$id") "; done
echo "routes per node: $routes_now"
writes=$((${w1%.*} - ${w0%.*})); ops=$((${o1%.*} - ${o0%.*}))
echo "node 4 raft writes during the storm: $writes, ops: $ops, ops/write: $(python3 -c "print(round($ops/max($writes,1),1))")"
for id in "${CORES[@]}" 4 5; do echo "node $id RSS: $(rss_kb "$id") kB"; done
python3 - "$STORM_J" "$SAMPLE_J" <<'PY'
import json, sys
s, m = json.loads(sys.argv[1]), json.loads(sys.argv[2])
conv = m["converged_unix_ms"]
after = conv - s["last_suback_unix_ms"] if conv else None
lat = s["suback_latency_us"]
print("| subscriptions | storm s | subscribes/s | SUBACK p50 ms | SUBACK p99 ms | SUBACK max ms | lag max | lag mean | converged after last SUBACK ms |")
print("|---|---|---|---|---|---|---|---|---|")
print(f"| {s['subscribed']} | {s['storm_ms']/1000:.2f} | {s['subscribes_per_s']:.0f} | {lat['p50']/1000:.1f} | {lat['p99']/1000:.1f} | {lat['max']/1000:.1f} | {m['lag_max']} | {m['lag_mean']} | {after} |")
PY
echo "samples: $WORK/samples.jsonl"
