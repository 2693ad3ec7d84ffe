#!/usr/bin/env bash
# The two figures of docs/performance.md, for shardmq and Mosquitto in one run on this machine:
# broker RSS per idle connection (N idle MQTT 5 clients, default 10,000) and 1 publisher ->
# 1 subscriber QoS 0 64-byte throughput at saturation (bounded pipeline of 1,000 messages).
# Prints a markdown table. Needs Debian's mosquitto (apt-get install mosquitto).
# Usage: bench/compare-basic.sh [N]
set -euo pipefail
N=${1:-10000}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command -v mosquitto >/dev/null || { echo "mosquitto is not installed" >&2; exit 1; }

declare -A idle tput p50 p99
for kind in shardmq mosquitto; do
  out=$(BROKER_KIND=$kind bash "$ROOT/bench/measure-idle.sh" "$N" 2>&1)
  idle[$kind]=$(sed -n 's/^broker bytes per idle connection (RSS): //p' <<<"$out")
  out=$(BROKER_KIND=$kind bash "$ROOT/bench/measure-throughput.sh" --duration-secs 10 2>&1)
  tput[$kind]=$(sed -n 's/^summary: .*received=[0-9]* in [0-9.]*s (\([0-9]*\) msg\/s).*/\1/p' <<<"$out")
  p50[$kind]=$(sed -n 's/^latency.* p50=\([0-9]*us\).*/\1/p' <<<"$out")
  p99[$kind]=$(sed -n 's/^latency.* p99=\([0-9]*us\).*/\1/p' <<<"$out")
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo "| figure | shardmq | mosquitto $(mosquitto -h 2>/dev/null | sed -n 's/^mosquitto version //p' | head -1) | shardmq / mosquitto |"
echo "| --- | --- | --- | --- |"
echo "| broker RSS per idle connection ($N clients), bytes | ${idle[shardmq]} | ${idle[mosquitto]} | $(ratio "${idle[shardmq]}" "${idle[mosquitto]}") |"
echo "| 1 pub -> 1 sub, QoS 0, 64 B, msg/s received | ${tput[shardmq]} | ${tput[mosquitto]} | $(ratio "${tput[shardmq]}" "${tput[mosquitto]}") |"
echo "| same run: latency p50 / p99 | ${p50[shardmq]} / ${p99[shardmq]} | ${p50[mosquitto]} / ${p99[mosquitto]} | |"
