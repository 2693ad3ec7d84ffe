#!/usr/bin/env bash
# What TLS costs, measured side by side in one run (issue 11's figures):
#   - 1:1 QoS 0 and QoS 1 over plain TCP and over TLS, for shardmq and Mosquitto (TLS
#     listener), and for the shardmq of BASE_REV (before TLS existed) over plain TCP, so that
#     "plain TCP did not get slower" is a same-run ratio;
#   - broker RSS per idle TLS connection at IDLE connections (shardmq and Mosquitto);
#   - broker CPU per TLS handshake + CONNECT: broker utime+stime over the connect phase of
#     those IDLE connections, divided by their count (TLS 1.3, P-256 server certificate).
# Every client speaks MQTT 3.1.1; each scenario gets a freshly started broker. Writes a
# markdown report to $OUT (default docs/security-bench.md) and JSON lines to $WORK.
#
# Usage: bench/security.sh
# Knobs: SECS=5, N=16 (pairs), IDLE=10000, BASE_REV=8d9c810 (the last commit before TLS; ""
# skips the baseline), SKIP_BUILD=1, BROKERS="base shardmq mosquitto", ROWS=0 (only the idle TLS
# and handshake figures).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/shardmq-security.XXXXXX)
SECS=${SECS:-5}
N=${N:-16}
IDLE=${IDLE:-10000}
BASE_REV=${BASE_REV-8d9c810}
BROKERS=${BROKERS:-"base shardmq mosquitto"}
OUT=${OUT:-$ROOT/docs/security-bench.md}
BENCH=$ROOT/target/release/shardmq-bench
SHARDMQ=$ROOT/target/release/shardmq
BASE=$ROOT/target/baseline/shardmq-$BASE_REV
RESULTS=$WORK/results.jsonl
PKI=$WORK/pki
BROKER_PID=""
echo "work directory: $WORK" >&2
[[ -z "$BASE_REV" ]] && BROKERS=${BROKERS//base/}

# cleanup and free_port; start_broker below replaces its start_broker.
# shellcheck source=bench/broker.sh
source "$ROOT/bench/broker.sh"
trap 'cleanup; [[ -n "${BASE_TREE:-}" ]] && git -C "$ROOT" worktree remove --force "$BASE_TREE" 2>/dev/null; true' EXIT

prepare() {
  command -v mosquitto >/dev/null || {
    echo "installing mosquitto (apt-get)..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >&2
  }
  if [[ -z "${SKIP_BUILD:-}" ]]; then
    echo "building release binaries..." >&2
    (cd "$ROOT" && cargo build --release -q -p shardmq -p shardmq-bench)
  fi
  if [[ " $BROKERS " == *" base "* && ! -x "$BASE" ]]; then
    echo "building shardmq at $BASE_REV (the baseline) ..." >&2
    BASE_TREE=$WORK/base-tree
    git -C "$ROOT" worktree add --detach "$BASE_TREE" "$BASE_REV" >&2
    (cd "$BASE_TREE" && CARGO_TARGET_DIR=$ROOT/target cargo build --release -q -p shardmq)
    mkdir -p "$(dirname "$BASE")"
    cp "$ROOT/target/release/shardmq" "$BASE"
    # The build above replaced the current binary: build it again.
    (cd "$ROOT" && cargo build --release -q -p shardmq)
  fi
  bash "$ROOT/tests/interop/certs.sh" "$PKI" >&2
  # Mosquitto drops root for its own user: it must be able to read the certificates.
  chmod 755 "$WORK" "$PKI"
  chmod 644 "$PKI"/*
}

# Starts broker $1 ("base", "shardmq" or "mosquitto") with a plain or TLS listener ($2) on
# 127.0.0.1:$PORT; sets BROKER_PID.
start_broker() {
  local kind=$1 transport=$2 common
  PORT=$(free_port)
  common=(RUST_LOG=warn SHARDMQ_SYS__INTERVAL_MS=0 SHARDMQ_API__LISTEN=
    SHARDMQ_MQTT__MAX_INFLIGHT=100 SHARDMQ_MQTT__MAX_QUEUED_MESSAGES=10000)
  case $kind-$transport in
    base-tcp) env "${common[@]}" SHARDMQ_LISTENER__BIND="127.0.0.1:$PORT" "$BASE" >"$WORK/$kind.log" 2>&1 & ;;
    shardmq-tcp) env "${common[@]}" SHARDMQ_LISTENER__BIND="127.0.0.1:$PORT" "$SHARDMQ" >"$WORK/$kind.log" 2>&1 & ;;
    shardmq-tls)
      env "${common[@]}" SHARDMQ_LISTENER__BIND= SHARDMQ_LISTENER__TLS__BIND="127.0.0.1:$PORT" \
        SHARDMQ_LISTENER__TLS__CERT_FILE="$PKI/server.pem" SHARDMQ_LISTENER__TLS__KEY_FILE="$PKI/server.key" \
        "$SHARDMQ" >"$WORK/$kind.log" 2>&1 &
      ;;
    mosquitto-*)
      {
        printf 'listener %s 127.0.0.1\n' "$PORT"
        if [[ $transport == tls ]]; then
          printf 'cafile %s\ncertfile %s\nkeyfile %s\n' "$PKI/ca.pem" "$PKI/server.pem" "$PKI/server.key"
        fi
        printf 'allow_anonymous true\nmax_connections -1\npersistence false\nset_tcp_nodelay true\nmax_queued_messages 10000\nmax_inflight_messages 100\nlog_dest stderr\nlog_type error\nlog_type warning\n'
      } >"$WORK/mosquitto.conf"
      mosquitto -c "$WORK/mosquitto.conf" >"$WORK/$kind.log" 2>&1 &
      ;;
    *) echo "no $transport listener for $kind" >&2; return 1 ;;
  esac
  BROKER_PID=$!
  for _ in $(seq 100); do
    kill -0 "$BROKER_PID" 2>/dev/null || { cat "$WORK/$kind.log" >&2; return 1; }
    [[ -n "$(ss -Htln "sport = :$PORT")" ]] && return 0
    sleep 0.1
  done
  echo "$kind did not listen within 10 s" >&2; return 1
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
tls_args() { [[ $1 == tls ]] && echo "--tls --cafile $PKI/ca.pem" || true; }

# One throughput row: broker $1 over $2, scenario name $3, bench arguments $4...
row() {
  local kind=$1 transport=$2 name=$3; shift 3
  start_broker "$kind" "$transport"
  local c0 c1 out rc=0
  c0=$(cpu_ticks "$BROKER_PID")
  # shellcheck disable=SC2046
  out=$("$BENCH" "$@" $(tls_args "$transport") -h 127.0.0.1 -p "$PORT" -V 4 --json 2>"$WORK/$kind-$transport-$name.err" | grep '"summary":true' | tail -1) || rc=$?
  c1=$(cpu_ticks "$BROKER_PID" 2>/dev/null || echo "$c0")
  cleanup
  [[ -n "$out" ]] || out='{}'
  python3 - "$kind" "$transport" "$name" "$out" "$c0" "$c1" "$rc" "$* $(tls_args "$transport")" >>"$RESULTS" <<'EOF'
import json, os, sys
kind, transport, name, out, c0, c1, rc, cmd = sys.argv[1:]
r = json.loads(out)
cpu = (int(c1) - int(c0)) / os.sysconf("SC_CLK_TCK")
r.update(broker=kind, transport=transport, scenario=name, rc=int(rc), broker_cpu_s=cpu,
         cmd="shardmq-bench " + cmd.strip() + " -V 4",
         msgs_per_cpu_s=(r.get("received") or 0) / cpu if cpu > 0 else None)
print(json.dumps(r))
EOF
  echo "  $kind/$transport $name: $(tail -1 "$RESULTS" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r.get("recv_rate"), r.get("msgs_per_cpu_s"), r.get("broker_cpu_s"))')" >&2
}

# IDLE connections over TLS: RSS per connection (peak while held, minus at rest) and broker
# CPU per handshake + CONNECT (over the connect phase).
idle_tls() {
  local kind=$1
  start_broker "$kind" tls
  sleep 0.5
  local rss0 c0 c1 peak=0 s pid out connected=0
  rss0=$(kib "$BROKER_PID" VmRSS)
  c0=$(cpu_ticks "$BROKER_PID")
  "$BENCH" conn --tls --cafile "$PKI/ca.pem" -h 127.0.0.1 -p "$PORT" -V 4 -c "$IDLE" --hold-secs "$SECS" \
    --ifaddr 127.0.0.2-127.0.0.20 --json >"$WORK/$kind-idle.out" 2>"$WORK/$kind-idle.err" &
  pid=$!
  c1=""
  while kill -0 "$pid" 2>/dev/null; do
    s=$(kib "$BROKER_PID" VmRSS 2>/dev/null || echo 0)
    (( s > peak )) && peak=$s
    # The connect phase ends when every connection is established: CPU from then on is idle.
    connected=$(ss -Htn state established "sport = :$PORT" 2>/dev/null | wc -l)
    if [[ -z "$c1" ]] && (( connected >= IDLE )); then c1=$(cpu_ticks "$BROKER_PID"); fi
    sleep 0.25
  done
  wait "$pid" || true
  [[ -n "$c1" ]] || c1=$(cpu_ticks "$BROKER_PID" 2>/dev/null || echo "$c0")
  out=$(grep '"command":"conn"' "$WORK/$kind-idle.out" | tail -1 || true)
  cleanup
  [[ -n "$out" ]] || out='{}'
  python3 - "$kind" "$out" "$rss0" "$peak" "$IDLE" "$c0" "$c1" "$SECS" >>"$RESULTS" <<'EOF'
import json, os, sys
kind, out, rss0, peak, n, c0, c1, secs = sys.argv[1:]
r = json.loads(out)
n = int(n)
ok = r.get("connect_succ") or n
cpu = (int(c1) - int(c0)) / os.sysconf("SC_CLK_TCK")
r.update(broker=kind, transport="tls", scenario="idle", rss0_kib=int(rss0),
         idle_peak_rss_kib=int(peak), bytes_per_conn=(int(peak) - int(rss0)) * 1024 / ok,
         connect_cpu_s=cpu, cpu_us_per_connect=cpu * 1e6 / ok,
         cmd=f"shardmq-bench conn --tls --cafile ca.pem -c {n} --hold-secs {secs} --ifaddr 127.0.0.2-127.0.0.20 -V 4")
print(json.dumps(r))
EOF
  echo "  $kind tls idle: $(tail -1 "$RESULTS" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r.get("bytes_per_conn"), "B/conn", r.get("cpu_us_per_connect"), "us/connect", r.get("connect_succ"))')" >&2
}

prepare
d=(--duration-secs "$SECS")
for q in $([[ ${ROWS:-1} == 0 ]] || echo 0 1); do
  for kind in $BROKERS; do
    for transport in tcp tls; do
      [[ $kind == base && $transport == tls ]] && continue
      row "$kind" "$transport" "1to1-q$q-16B-sat" pubsub --pubs "$N" --subs "$N" -t 'bench/%i' -q "$q" -s 16 "${d[@]}"
    done
  done
done
for kind in $BROKERS; do
  [[ $kind == base ]] && continue
  idle_tls "$kind"
done

machine="$(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), Linux $(uname -r)"
python3 - "$RESULTS" "$machine" "$(git -C "$ROOT" rev-parse --short HEAD)" "$BASE_REV" \
  "$(mosquitto -h 2>/dev/null | sed -n 's/^mosquitto version //p' | head -1)" \
  "SECS=$SECS N=$N IDLE=$IDLE" >"$OUT" <<'EOF'
import json, sys, datetime
results, machine, head, base_rev, mosq, knobs = sys.argv[1:]
rows = [json.loads(l) for l in open(results)]
by = {(r["broker"], r["transport"], r["scenario"]): r for r in rows}
def f(x, d=0):
    return "n/a" if x is None else f"{x:,.{d}f}"
def ratio(a, b):
    return "n/a" if not a or not b else f"{a / b:.2f}"
o = ["# TLS and the plain-TCP path, measured side by side\n",
     "Generated by `bench/security.sh` (one run, loopback, a fresh broker per row; broker and "
     "load generator share every CPU). Read the ratios.\n",
     f"- Date: {datetime.date.today()}; machine: {machine}",
     f"- shardmq {head}; baseline shardmq {base_rev} (before TLS); Mosquitto {mosq}",
     f"- Knobs: `{knobs}`; MQTT 3.1.1; TLS 1.3, P-256 server certificate (tests/interop/certs.sh)\n",
     "## Throughput (saturation, 16 B payloads)\n",
     "| row | broker | transport | msg/s | broker CPU s | messages per broker CPU-second |",
     "| --- | --- | --- | --- | --- | --- |"]
for r in rows:
    if r["scenario"] == "idle":
        continue
    o.append(f"| {r['scenario']} | {r['broker']} | {r['transport']} | {f(r.get('recv_rate'))} | "
             f"{f(r.get('broker_cpu_s'), 2)} | {f(r.get('msgs_per_cpu_s'))} |")
o.append("\n## Ratios\n")
o.append("| row | shardmq tcp / base tcp (msg/s, per CPU-s) | shardmq tls / mosquitto tls (msg/s, per CPU-s) | shardmq tls / shardmq tcp (msg/s) |")
o.append("| --- | --- | --- | --- |")
for q in (0, 1):
    s = f"1to1-q{q}-16B-sat"
    g = lambda b, t, k: by.get((b, t, s), {}).get(k)
    o.append(f"| {s} | {ratio(g('shardmq','tcp','recv_rate'), g('base','tcp','recv_rate'))}, "
             f"{ratio(g('shardmq','tcp','msgs_per_cpu_s'), g('base','tcp','msgs_per_cpu_s'))} | "
             f"{ratio(g('shardmq','tls','recv_rate'), g('mosquitto','tls','recv_rate'))}, "
             f"{ratio(g('shardmq','tls','msgs_per_cpu_s'), g('mosquitto','tls','msgs_per_cpu_s'))} | "
             f"{ratio(g('shardmq','tls','recv_rate'), g('shardmq','tcp','recv_rate'))} |")
o.append("\n## Idle TLS connections and handshake cost\n")
o.append("| figure | shardmq | mosquitto |")
o.append("| --- | --- | --- |")
for key, label, d in [("bytes_per_conn", "broker RSS per idle TLS connection, bytes", 0),
                      ("cpu_us_per_connect", "broker CPU per TLS handshake + CONNECT, µs", 0),
                      ("connect_succ", "connections established", 0),
                      ("connect_rate", "connections per second", 0)]:
    o.append(f"| {label} | {f(by.get(('shardmq','tls','idle'), {}).get(key), d)} | "
             f"{f(by.get(('mosquitto','tls','idle'), {}).get(key), d)} |")
o.append("\n## Commands\n\nEvery row adds `-h 127.0.0.1 -p PORT -V 4 --json`:\n\n```")
for r in rows:
    o.append(f"{r['broker']}/{r['transport']} {r['scenario']}: {r.get('cmd')}")
o.append("```")
print("\n".join(o))
EOF
echo "wrote $OUT" >&2
