#!/usr/bin/env bash
# Durability figures (docs/durability.md), peers in the same run:
#  1. QoS 1, 1:1 (N publishers, N persistent subscribers: MQTT 5.0, Clean Start off, Session
#     Expiry 3600 s), saturated: shardmq with storage.durability = "sync", "async" and "off",
#     Mosquitto with `persistence true` (autosave_interval 1800, its default), FlashMQ with
#     storage_dir when FLASHMQ=path/to/flashmq is given. msg/s received and messages per broker
#     CPU-second (utime+stime of the broker process over the run).
#  2. The kill -9 loop: ROUNDS (100) rounds of tests/durability.rs's
#     every_acknowledged_message_survives_kill_9_at_random_moments (KILL_ROUNDS=ROUNDS).
#
#  With PLAIN=1: the same row with NON-persistent sessions (MQTT 3.1.1, clean session: the
#  bench's default), to show that plain QoS 1 does not pay for durability it does not use.
#
# Usage: bench/durability.sh [--no-kill] ; env: N (16), SECS (10), SIZE (16), ROUNDS (100),
#        CPUS (broker shards, "0-1"), BENCH_CPUS (load generator CPUs, unset = unpinned),
#        KINDS (the brokers, in order, e.g. "shardmq-off shardmq-sync"), REPEAT (1: rounds of
#        KINDS, alternated, so that a noisy machine hits every broker alike), PLAIN (0).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/shardmq-durability.XXXXXX)
BROKER="$ROOT/target/release/shardmq"
BENCH="$ROOT/target/release/shardmq-bench"
N=${N:-16}
SECS=${SECS:-10}
SIZE=${SIZE:-16}
ROUNDS=${ROUNDS:-100}
CPUS=${CPUS:-0-1}
BROKER_PID=""
RESULTS="$WORK/results.jsonl"

cleanup() {
  if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$BROKER_PID" 2>/dev/null || true
  fi
  BROKER_PID=""
}
trap 'cleanup; rm -rf "$WORK"' EXIT

free_port() {
  local port
  for _ in $(seq 100); do
    port=$((19000 + RANDOM % 2000))
    if [[ -z "$(ss -Htln "sport = :$port")" ]]; then echo "$port"; return 0; fi
  done
  return 1
}

# start_broker KIND: shardmq-sync | shardmq-async | shardmq-off | mosquitto | flashmq
start_broker() {
  local kind=$1
  PORT=$(free_port)
  rm -rf "$WORK/data" && mkdir -p "$WORK/data"
  case "$kind" in
    shardmq-*)
      RUST_LOG=warn SHARDMQ_LISTENER__BIND="127.0.0.1:$PORT" SHARDMQ_SYS__INTERVAL_MS=0 \
        SHARDMQ_API__LISTEN= SHARDMQ_NODE__CPUS="$CPUS" SHARDMQ_STORAGE__DIR="$WORK/data" \
        SHARDMQ_STORAGE__DURABILITY="${kind#shardmq-}" "$BROKER" >"$WORK/$kind.log" 2>&1 &
      ;;
    mosquitto)
      chmod 777 "$WORK/data"
      printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\npersistence true\npersistence_location %s/\nmax_queued_messages 100000\nset_tcp_nodelay true\nlog_dest stderr\nlog_type error\n' \
        "$PORT" "$WORK/data" >"$WORK/mosquitto.conf"
      mosquitto -c "$WORK/mosquitto.conf" >"$WORK/$kind.log" 2>&1 &
      ;;
    flashmq)
      printf 'storage_dir %s\nallow_anonymous true\nlisten {\n  protocol mqtt\n  inet4_bind_address 127.0.0.1\n  port %s\n}\n' \
        "$WORK/data" "$PORT" >"$WORK/flashmq.conf"
      "$FLASHMQ" --config-file "$WORK/flashmq.conf" >"$WORK/$kind.log" 2>&1 &
      ;;
  esac
  BROKER_PID=$!
  for _ in $(seq 100); do
    kill -0 "$BROKER_PID" 2>/dev/null || { cat "$WORK/$kind.log" >&2; return 1; }
    [[ -n "$(ss -Htln "sport = :$PORT")" ]] && return 0
    sleep 0.1
  done
  echo "$kind did not listen within 10 s" >&2
  return 1
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

row() {
  local kind=$1
  start_broker "$kind"
  local c0 c1 out
  local args=(pubsub --pubs "$N" --subs "$N" -t 'bench/%i' -q 1 -s "$SIZE")
  if [[ "${PLAIN:-0}" == 1 ]]; then args+=(-V 4); else args+=(-V 5 --clean-start false -x 3600); fi
  args+=(--duration-secs "$SECS" -h 127.0.0.1 -p "$PORT" --json)
  if [[ -n "${BENCH_CPUS:-}" ]]; then args+=(--cpus "$BENCH_CPUS"); fi
  c0=$(cpu_ticks "$BROKER_PID")
  out=$("$BENCH" "${args[@]}" 2>"$WORK/$kind.err" | grep '"summary":true' | tail -1) || true
  c1=$(cpu_ticks "$BROKER_PID" 2>/dev/null || echo "$c0")
  local disk
  disk=$(du -sb "$WORK/data" | cut -f1)
  cleanup
  [[ -n "$out" ]] || out='{}'
  python3 - "$kind" "$out" "$c0" "$c1" "$disk" "shardmq-bench ${args[*]}" >>"$RESULTS" <<'EOF'
import json, os, sys
kind, out, c0, c1, disk, cmd = sys.argv[1:]
r = json.loads(out)
cpu = (int(c1) - int(c0)) / os.sysconf("SC_CLK_TCK")
rate = r.get("recv_rate") or 0
recv = r.get("received") or rate * float(r.get("duration_s") or 0)
print(json.dumps(dict(broker=kind, recv_rate=rate, broker_cpu_s=cpu,
                      msgs_per_cpu_s=(recv / cpu if cpu else None), disk_bytes=int(disk),
                      p99_us=(r.get("latency_us") or {}).get("p99"), cmd=cmd)))
EOF
  tail -1 "$RESULTS" >&2
}

[[ -x "$BROKER" && -x "$BENCH" ]] || (cd "$ROOT" && cargo build --release -q -p shardmq -p shardmq-bench)
echo "QoS 1 1:1, $N publishers / $N subscribers (PLAIN=${PLAIN:-0}), ${SIZE} B, ${SECS} s, shards $CPUS" >&2
if [[ -n "${KINDS:-}" ]]; then
  read -r -a kinds <<<"$KINDS"
else
  kinds=(shardmq-off shardmq-sync shardmq-async)
  command -v mosquitto >/dev/null && kinds+=(mosquitto)
  [[ -n "${FLASHMQ:-}" ]] && kinds+=(flashmq)
fi
for _ in $(seq "${REPEAT:-1}"); do
  for kind in "${kinds[@]}"; do row "$kind"; done
done
python3 - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
offs = [r["recv_rate"] for r in rows if r["broker"] == "shardmq-off"]
off = sum(offs) / len(offs) if offs else None  # the mean of the run's "off" rows
print("| broker | msg/s | vs shardmq off | msgs per broker CPU-s | broker CPU s | p99 µs | disk bytes after |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    ratio = f'{100 * r["recv_rate"] / off:.0f} %' if off else "-"
    per = f'{r["msgs_per_cpu_s"]:,.0f}' if r["msgs_per_cpu_s"] else "-"
    print(f'| {r["broker"]} | {r["recv_rate"]:,.0f} | {ratio} | {per} | {r["broker_cpu_s"]:.1f} | {r["p99_us"]} | {r["disk_bytes"]:,} |')
print()
kinds = list(dict.fromkeys(r["broker"] for r in rows))
if len(rows) > len(kinds):
    print("| broker | rounds | mean msg/s | vs mean off | mean msgs per broker CPU-s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for k in kinds:
        rs = [r for r in rows if r["broker"] == k]
        rate = sum(r["recv_rate"] for r in rs) / len(rs)
        per = [r["msgs_per_cpu_s"] for r in rs if r["msgs_per_cpu_s"]]
        per = f'{sum(per) / len(per):,.0f}' if per else "-"
        ratio = f'{100 * rate / off:.0f} %' if off else "-"
        print(f'| {k} | {len(rs)} | {rate:,.0f} | {ratio} | {per} |')
    print()
print("command:", rows[0]["cmd"] if rows else "-")
EOF

if [[ "${1:-}" != "--no-kill" ]]; then
  echo "kill -9 loop: $ROUNDS rounds" >&2
  start=$(date +%s)
  (cd "$ROOT" && KILL_ROUNDS="$ROUNDS" timeout 1800 cargo test -q --test durability \
    every_acknowledged_message_survives_kill_9 -- --nocapture 2>&1 | grep -E "KILL_SEED|rounds in|lost|test result")
  echo "kill -9 loop: $(( $(date +%s) - start )) s" >&2
fi
