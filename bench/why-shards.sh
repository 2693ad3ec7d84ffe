#!/usr/bin/env bash
# A fixed-load row of bench/compare for shardmq on 2 shards, shardmq on 1 shard, Mosquitto and
# rumqttd (if bench/compare installed it), ROUNDS times each, interleaved. Prints p50/p99 per
# round. One shard against two isolates the cross-shard hop (publisher and subscriber on
# different shards) from the rest of the path.
#
# Usage: bench/why-shards.sh [ROUNDS=3] [SECS=5] [pubsub options...]
# The default options are the fan-in row (16 publishers → one shared group of 4, QoS 0, 16 B,
# 20,000 msg/s in all); e.g. the QoS 1 1:1 row:
#   bench/why-shards.sh 3 5 --pubs 16 --subs 16 -t 'bench/%i' -q 1 -s 16 -r 1250
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-5}
shift $(( $# < 2 ? $# : 2 ))
ARGS=("$@")
if (( ${#ARGS[@]} == 0 )); then
  ARGS=(--pubs 16 --subs 4 -t 'bench/%i' --sub-topic 'bench/#' --shared-group g -q 0 -s 16 -r 1250)
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/shardmq-why-shards.XXXXXX)
# shellcheck source=bench/broker.sh
source "$ROOT/bench/broker.sh"
trap cleanup EXIT
[[ -n "${SKIP_BUILD:-}" ]] || build
echo "| broker | round | delivered | p50 µs | p99 µs |"
echo "|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  kinds=("shardmq 2 shards" "shardmq 1 shard" mosquitto)
  [[ -x "$ROOT/target/peers/bin/rumqttd" ]] && kinds+=(rumqttd)
  for kind in "${kinds[@]}"; do
    use_broker "$kind"
    start_broker 2>/dev/null
    "$BENCH" pubsub "${ARGS[@]}" --duration-secs "$SECS" -V 4 -h 127.0.0.1 -p "$PORT" --json 2>/dev/null |
      grep '"summary":true' | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
got, p50, p99 = r["received"], r["latency_us"]["p50"], r["latency_us"]["p99"]
print(f"| {sys.argv[1]} | {sys.argv[2]} | {got:,} | {p50:.0f} | {p99:.0f} |")' "$kind" "$r"
    cleanup
    BROKER_PID=""
  done
done
