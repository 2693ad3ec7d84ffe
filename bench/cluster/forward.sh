#!/usr/bin/env bash
# Cross-node forwarding vs single node, one run: a 2-node cluster, node A = core 1 on CPU 0,
# node B = replicant 2 on CPU 1 (SHARDMQ_NODE__CPUS=0 / 1: one shard each). For QoS 0 and 1,
# 64-byte payloads, PUBS publishers -> SUBS subscribers on one topic each (bench/%i):
#   single: `shardmq-bench sub` and `pub` both against A;
#   cross:  `sub` against B, `pub` against A (every message is forwarded A -> B over QUIC).
# At saturation (--rate 0) and at a fixed offered load (RATE msg/s in total). Latency is
# publisher encode -> subscriber decode (CLOCK_MONOTONIC stamp in the payload, same host).
# The two bench processes are not pinned (they share the 2 CPUs with the brokers).
#   bench/cluster/forward.sh                # SECS=10 RATE=20000 PUBS=1 SUBS=1
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/shardmq-fwd.XXXXXX)
SECS=${SECS:-10}
RATE=${RATE:-20000}
PUBS=${PUBS:-1}
SUBS=${SUBS:-$PUBS}
QOSES=${QOSES:-"0 1"}
source "$ROOT/bench/cluster/common.sh"
begin

# A fresh 2-node cluster for every measurement: an overloaded run cannot spoil the next one.
fresh_cluster() {
  local id
  for id in 1 2; do
    if [[ -n "${NODE_PID[$id]:-}" ]]; then stop_node "$id"; fi
    rm -rf "${NODE_DIR[$id]:-/nonexistent}"
  done
  plan_node 1 core 0
  plan_node 2 replicant 1
  SEEDS=$(seeds_of 1)
  for id in 1 2; do start_node "$id" "$SEEDS"; done
  wait_until 60 has_leader 1 || { echo "no leader" >&2; exit 1; }
  wait_until 60 all_normal 2 || { echo "replicant not normal" >&2; exit 1; }
  sleep 1
}

# run NAME SUB_NODE QOS RATE_TOTAL: one measurement; prints a JSON line.
run() {
  local name=$1 subnode=$2 qos=$3 total=$4 per=0
  if ((total > 0)); then per=$((total / PUBS)); fi
  local tag="$name-q$qos-r$total"
  fresh_cluster
  local f0 d0
  f0=$(metric 1 shardmq_forward_sent); d0=$(metric 1 shardmq_forward_dropped)
  timeout -k 5 $((SECS + 20)) "$BENCH" sub -h 127.0.0.1 -p "${NODE_MQTT[$subnode]}" -c "$SUBS" \
    -t 'bench/%i' -q "$qos" --duration-secs $((SECS + 4)) --prefix "s$tag" --json \
    >"$WORK/$tag.sub.json" 2>"$WORK/$tag.sub.err" &
  local sub=$!
  PIDS+=("$sub")
  # The routes of B's subscriptions reach A through the cluster before publishing starts.
  sleep 2
  timeout -k 5 $((SECS + 10)) "$BENCH" pub -h 127.0.0.1 -p "${NODE_MQTT[1]}" -c "$PUBS" \
    -t 'bench/%i' -q "$qos" -s 64 --rate "$per" --duration-secs "$SECS" --prefix "p$tag" --json \
    >"$WORK/$tag.pub.json" 2>"$WORK/$tag.pub.err" || true
  wait "$sub" || true
  local f1 d1
  f1=$(metric 1 shardmq_forward_sent); d1=$(metric 1 shardmq_forward_dropped)
  local stall=""
  if grep -q "pub=0 " <(tail -n 3 "$WORK/$tag.pub.err"); then stall=" (publisher stopped sending before its end)"; fi
  echo "$tag: $(tail -n 1 "$WORK/$tag.pub.err")$stall" >&2
  python3 - "$name" "$qos" "$total" "$(grep '"summary"' "$WORK/$tag.pub.json")" \
    "$(grep '"summary"' "$WORK/$tag.sub.json")" "$((${f1%.*} - ${f0%.*}))" "$((${d1%.*} - ${d0%.*}))" <<'PY'
import json, sys
name, qos, total, p, s, fwd, drop = sys.argv[1:8]
s = json.loads(s)
try:
    p = json.loads(p)
    stalled = False
except ValueError:  # the publisher was killed: it stalled (see docs/cluster.md)
    p = {"sent": -1, "pub_rate": -1}
    stalled = True
lat = s["latency_us"]
print(json.dumps({"mode": name, "qos": int(qos), "offered": int(total), "sent": p["sent"],
    "pub_rate": round(p["pub_rate"]), "received": s["received"], "recv_rate": round(s["recv_rate"]),
    "p50_us": lat["p50"], "p99_us": lat["p99"], "forwarded": int(fwd), "forward_dropped": int(drop), "pub_stalled": stalled}))
PY
}

: >"$WORK/results.jsonl"
for qos in $QOSES; do
  for total in 0 "$RATE"; do
    # Not in a pipeline: run must change this shell's NODE_PID and PIDS.
    run single 1 "$qos" "$total" >>"$WORK/results.jsonl"
    tail -n 1 "$WORK/results.jsonl"
    run cross 2 "$qos" "$total" >>"$WORK/results.jsonl"
    tail -n 1 "$WORK/results.jsonl"
  done
done
python3 - "$WORK/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| QoS | offered msg/s | single recv msg/s | cross recv msg/s | ratio | single p50/p99 us | cross p50/p99 us | cross lost |")
print("|---|---|---|---|---|---|---|---|")
for q in sorted({r["qos"] for r in rows}):
    for off in sorted({r["offered"] for r in rows}):
        s = next(r for r in rows if r["qos"] == q and r["offered"] == off and r["mode"] == "single")
        c = next(r for r in rows if r["qos"] == q and r["offered"] == off and r["mode"] == "cross")
        ratio = c["recv_rate"] / s["recv_rate"] if s["recv_rate"] else 0
        print(f"| {q} | {off or 'saturation'} | {s['recv_rate']} | {c['recv_rate']} | {ratio:.2f} | "
              f"{s['p50_us']:.0f} / {s['p99_us']:.0f} | {c['p50_us']:.0f} / {c['p99_us']:.0f} | "
              f"{c['sent'] - c['received'] if c['sent'] >= 0 else 'n/a'} (fwd dropped {c['forward_dropped']}){' STALLED' if c['pub_stalled'] or s['pub_stalled'] else ''} |")
PY
