#!/usr/bin/env bash
# Broker throughput and end-to-end latency, one publisher to one subscriber.
#
# Usage: bench/measure-throughput.sh [extra shardmq-bench pubsub options...]
# Starts a release broker, runs
#   shardmq-bench pubsub --pubs 1 --subs 1 -q 0 -s 64 --duration-secs 10 [extra...]
# (later options override earlier ones, e.g. `-q 1` or `--rate 20000`), prints messages per
# second received and the latency percentiles, and the broker's warnings if it logged any.
# Env: BROKER_CPUS (e.g. 0) and BENCH_CPUS (e.g. 1) to give broker and bench their own cores.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/shardmq-throughput.XXXXXX)
# shellcheck source=bench/broker.sh
source "$ROOT/bench/broker.sh"
trap cleanup EXIT

[[ -n "${SKIP_BUILD:-}" ]] || build
start_broker
cpus=()
if [[ -n "${BENCH_CPUS:-}" ]]; then cpus=(--cpus "$BENCH_CPUS"); fi

timeout 120 "$BENCH" pubsub -h 127.0.0.1 -p "$PORT" --pubs 1 --subs 1 -q 0 -s 64 \
  --duration-secs 10 "${cpus[@]}" "$@" >"$WORK/bench.log" 2>&1 &
BENCH_PID=$!
bench_rc=0
wait "$BENCH_PID" || bench_rc=$?
BENCH_PID=""
cat "$WORK/bench.log"
check_broker
if [[ -s "$WORK/broker.log" ]]; then
  echo "broker log (RUST_LOG=warn), last lines of $WORK/broker.log:"
  tail -20 "$WORK/broker.log"
fi
exit "$bench_rc"
