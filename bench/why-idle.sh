#!/usr/bin/env bash
# Where shardmq's memory per idle connection goes, against Mosquitto, in one run.
#
# Usage: bench/why-idle.sh [N=10000] [ROUNDS=2]
# Runs bench/measure-idle.sh N (N idle MQTT clients, RSS per connection) ROUNDS times for each
# of: Mosquitto; io_uring without a task per connection (`shardmq-capacity floor --hold
# uring`: the design target); glommio alone holding the socket (`shardmq-capacity floor --hold socket`),
# plus a task with a pending read (`read`), plus the keep-alive read timeout (`read-timeout`,
# what the broker's driver holds); and shardmq. Prints one table row per kind with every
# round's bytes per connection. shardmq minus `read-timeout` is shardmq's own state; the
# steps between floors are glommio's parts.
set -euo pipefail
N=${1:-10000}
ROUNDS=${2:-2}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/shardmq-why-idle.XXXXXX)
# shellcheck source=bench/broker.sh
source "$ROOT/bench/broker.sh"
[[ -n "${SKIP_BUILD:-}" ]] || build
command -v mosquitto >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >&2
}
kinds=(mosquitto floor:uring floor:socket floor:read floor:read-timeout shardmq)
echo "| holder | bytes per idle connection, each round |"
echo "|---|---|"
for kind in "${kinds[@]}"; do
  row=()
  for r in $(seq "$ROUNDS"); do
    BROKER_KIND=$kind SKIP_BUILD=1 bash "$ROOT/bench/measure-idle.sh" "$N" \
      >"$WORK/$kind-$r.log" 2>>"$WORK/stderr.log" || echo "$kind round $r failed: see $WORK" >&2
    row+=("$(sed -n 's/^broker bytes per idle connection (RSS): //p' "$WORK/$kind-$r.log" | grep . || echo failed)")
  done
  echo "| $kind | ${row[*]} |"
done
echo "(logs: $WORK)" >&2
