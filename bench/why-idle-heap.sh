#!/usr/bin/env bash
# Where the heap of an idle connection goes: heaptrack's live bytes per idle connection, by the
# broker function that allocated them.
#
# Usage: bench/why-idle-heap.sh [N=10000]
# Builds shardmq with `--features system-alloc` (the C library's malloc, which heaptrack hooks;
# mimalloc's would not be seen) into target/sysalloc, then runs it twice under heaptrack: once
# holding N idle MQTT 5 connections (shardmq-bench conn, source addresses 127.0.0.2-127.0.0.20),
# once holding none for as long. Each run is killed with SIGKILL while the connections are held,
# so heaptrack's "leaked" bytes are the heap live at that moment. Prints, per allocating frame
# (the innermost shardmq function and its caller), (live with N - live with 0) / N, and the
# total. RSS adds the allocator's own overhead on top: bench/measure-idle.sh measures that.
# Env: SKIP_BUILD=1 to use target/sysalloc as built, HOLD_SECS (default 8), TOP (default 20).
# Needs heaptrack (Debian package heaptrack; installed here if missing).
set -euo pipefail

N=${1:-10000}
HOLD_SECS=${HOLD_SECS:-8}
TOP=${TOP:-20}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/shardmq-heap.XXXXXX)
BROKER="$ROOT/target/sysalloc/release/shardmq"
# shellcheck source=bench/broker.sh
source "$ROOT/bench/broker.sh"
trap cleanup EXIT

if ! command -v heaptrack >/dev/null; then
  apt-get install -y -q heaptrack >/dev/null
fi
if (( N + 100 > $(ulimit -n) )); then
  echo "N=$N needs more than the $(ulimit -n) open files this shell allows" >&2
  exit 1
fi
if [[ -z "${SKIP_BUILD:-}" ]]; then
  (cd "$ROOT" && CARGO_TARGET_DIR="$ROOT/target/sysalloc" timeout 2400 \
    cargo build --release -q -p shardmq --features system-alloc)
  (cd "$ROOT" && timeout 1800 cargo build --release -q -p shardmq-bench)
fi

# One run under heaptrack holding $1 connections; leaves the collapsed stacks of the live heap
# in $WORK/live-$1.txt.
profile() {
  local conns=$1 port
  port=$(free_port)
  # MIMALLOC_ARENA_EAGER_COMMIT=0 keeps the binary from re-executing itself (main.rs), which
  # heaptrack would not follow.
  env MIMALLOC_ARENA_EAGER_COMMIT=0 RUST_LOG=warn SHARDMQ_LISTENER__BIND="127.0.0.1:$port" \
    SHARDMQ_SYS__INTERVAL_MS=0 SHARDMQ_STORAGE__DIR="$WORK/data-$conns" \
    heaptrack -o "$WORK/heap-$conns" "$BROKER" >"$WORK/broker-$conns.log" 2>&1 &
  local tracer=$!
  for _ in $(seq 300); do
    [[ -n "$(ss -Htln "sport = :$port")" ]] && break
    kill -0 "$tracer" 2>/dev/null || { cat "$WORK/broker-$conns.log" >&2; exit 1; }
    sleep 0.1
  done
  if (( conns > 0 )); then
    timeout $((HOLD_SECS + 180)) "$BENCH" conn -h 127.0.0.1 -p "$port" -c "$conns" \
      --hold-secs "$HOLD_SECS" --ifaddr 127.0.0.2-127.0.0.20 >"$WORK/bench-$conns.log" 2>&1 &
    BENCH_PID=$!
    wait_for_line "^all $conns attempted" "$WORK/bench-$conns.log" 150 \
      || { cat "$WORK/bench-$conns.log" >&2; exit 1; }
    grep "^all $conns attempted" "$WORK/bench-$conns.log" >&2
  fi
  sleep $((HOLD_SECS / 2))
  pkill -9 -P "$tracer" -x shardmq || pkill -9 -f "^$BROKER" || true
  wait "$tracer" 2>/dev/null || true
  if [[ -n "$BENCH_PID" ]]; then wait "$BENCH_PID" 2>/dev/null || true; BENCH_PID=""; fi
  heaptrack_print -f "$WORK/heap-$conns".*zst -F "$WORK/live-$conns.txt" \
    --flamegraph-cost-type leaked >/dev/null
}

profile 0
profile "$N"

python3 - "$WORK/live-0.txt" "$WORK/live-$N.txt" "$N" "$TOP" <<'EOF'
import sys
from collections import Counter

def groups(path):
    out = Counter()
    for line in open(path, errors="replace"):
        stack, _, cost = line.rstrip("\n").rpartition(" ")
        if not cost.isdigit():
            continue
        frames = stack.split(";")
        # The innermost broker frame, and the broker frame that called it.
        ours = [f for f in frames if "shardmq" in f]
        key = " <- ".join(reversed(ours[-2:])) if ours else "(outside shardmq) " + frames[-1][:80]
        out[key] += int(cost)
    return out

before, after, n, top = groups(sys.argv[1]), groups(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
diff = Counter({k: after[k] - before.get(k, 0) for k in after})
total = sum(diff.values())
print(f"live heap per idle connection: {total / n:.0f} B ({n} connections)")
for key, b in diff.most_common(top):
    if b / n < 1:
        break
    print(f"{b / n:8.1f} B  {key}")
EOF
