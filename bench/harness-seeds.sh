#!/usr/bin/env bash
# How fast the in-memory harness of shardmq-core (shards/core/tests/harness.rs) runs seeds:
# N shard cores and M clients per seed, in a release build, on every CPU.
#
# Usage: bench/harness-seeds.sh [SEEDS]      (default 100000)
# Runs `cargo test --release -p shardmq-core --test harness` with SHARD_SEEDS=SEEDS (every
# property's test reads one pass over seeds 0..SEEDS; the ignored ones, which name known core
# bugs, are left out), then prints the harness's own summary (seeds/s, events, what it
# checked, which properties fail on which seeds), the wall time of the pass and of the whole
# command (build included), and the test result.
# Env: CARGO_TARGET_DIR (default: the workspace's target/), SKIP_BUILD=1 (do not build first).
set -euo pipefail

SEEDS=${1:-100000}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    cargo test --release -p shardmq-core --test harness --no-run
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s.%N)
set +e
SHARD_SEEDS=$SEEDS cargo test --release -p shardmq-core --test harness -- --nocapture \
    >"$log" 2>&1
rc=$?
set -e
end=$(date +%s.%N)

grep '^harness:' "$log" || true
grep '^test result:' "$log" || true
if [[ $rc -ne 0 ]]; then
    grep -E '^test .* FAILED$|^property ' "$log" || true
fi
awk -v s="$start" -v e="$end" -v n="$SEEDS" 'BEGIN {
    t = e - s
    printf "harness-seeds: %d seeds, command %.1f s (%.0f seeds/s including start-up)\n", n, t, n / t
}'
exit $rc
