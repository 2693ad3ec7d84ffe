#!/usr/bin/env bash
# The fan-in row of bench/compare at its fixed offered load, for shardmq on 2 shards, shardmq on
# 1 shard and Mosquitto, ROUNDS times each, interleaved: 16 publishers → one shared-subscription
# group of 4, QoS 0, 16 B, 20,000 msg/s in all. Prints p50/p99 per round. One shard against two
# isolates the cross-shard hop (a publisher and the group member that gets its message on
# different shards) from the rest of the path.
#
# Usage: bench/why-fanin.sh [ROUNDS=3] [SECS=5]
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-5}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/shardmq-why-fanin.XXXXXX)
# shellcheck source=bench/broker.sh
source "$ROOT/bench/broker.sh"
trap cleanup EXIT
[[ -n "${SKIP_BUILD:-}" ]] || build
echo "| broker | round | delivered | p50 µs | p99 µs |"
echo "|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  for kind in shardmq-2 shardmq-1 mosquitto; do
    case $kind in
      shardmq-2) BROKER_KIND=shardmq BROKER_CPUS="" ;;
      shardmq-1) BROKER_KIND=shardmq BROKER_CPUS=0 ;;
      mosquitto) BROKER_KIND=mosquitto BROKER_CPUS="" ;;
    esac
    start_broker 2>/dev/null
    "$BENCH" pubsub --pubs 16 --subs 4 -t 'bench/%i' --sub-topic 'bench/#' --shared-group g -q 0 \
      -s 16 -r 1250 --duration-secs "$SECS" -V 4 -h 127.0.0.1 -p "$PORT" --json 2>/dev/null |
      grep '"summary":true' | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
got, p50, p99 = r["received"], r["latency_us"]["p50"], r["latency_us"]["p99"]
print(f"| {sys.argv[1]} | {sys.argv[2]} | {got:,} | {p50:.0f} | {p99:.0f} |")' "$kind" "$r"
    cleanup
    BROKER_PID=""
  done
done
