#!/usr/bin/env bash
# The same shardmq measurements for two builds in one run, alternated: a refactor's "does not
# regress" check (docs/ARCHITECTURE.md, issue 16). Rows: saturated 1:1 QoS 0 and QoS 1
# (16 pairs, 16 B, 10 s, messages/s received), and broker RSS per idle connection (10,000).
#
# Usage: BEFORE=path/to/old/shardmq bench/before-after.sh   (AFTER defaults to this tree's
#        target/release/shardmq; SKIP_BUILD=1 skips building it; ROUNDS=2; IDLE=10000)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BEFORE=${BEFORE:?BEFORE=path to the shardmq binary to compare with}
AFTER=${AFTER:-$ROOT/target/release/shardmq}
ROUNDS=${ROUNDS:-2}
IDLE=${IDLE:-10000}
if [[ -z "${SKIP_BUILD:-}" ]]; then
  (cd "$ROOT" && cargo build --release -q -p shardmq -p shardmq-bench -p shardmq-capacity)
fi
rate() { # binary qos
  BROKER=$1 SKIP_BUILD=1 "$ROOT/bench/measure-throughput.sh" --pubs 16 --subs 16 -t 'ba/%i' \
    -q "$2" -s 16 --duration-secs 10 2>&1 | python3 -c '
import re, sys
text = sys.stdin.read()
m = re.search(r"received[^\n]*?([0-9][0-9,.]*) msg/s", text) or re.search(r"([0-9][0-9,.]*) msg/s", text)
print(m.group(1).replace(",", "") if m else "?")'
}
idle() { # binary
  BROKER=$1 SKIP_BUILD=1 HOLD_SECS=3 "$ROOT/bench/measure-idle.sh" "$IDLE" 2>&1 |
    sed -n 's/^broker bytes per idle connection (RSS): //p'
}
echo "| round | build | 1:1 QoS 0 msg/s | 1:1 QoS 1 msg/s | B per idle connection |"
echo "|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  for which in before after; do
    if [[ $which == before ]]; then bin=$BEFORE; else bin=$AFTER; fi
    q0=$(rate "$bin" 0)
    q1=$(rate "$bin" 1)
    mem=$(idle "$bin")
    echo "| $round | $which | $q0 | $q1 | $mem |"
  done
done
