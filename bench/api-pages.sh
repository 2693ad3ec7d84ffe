#!/usr/bin/env bash
# Issue 14: listing 100,000 clients pages in bounded memory and time on the API's thread.
#
# Usage: bench/api-pages.sh
# Starts a release broker (2 shards, its management API on loopback, durability off, $SYS
# off), makes SESSIONS offline persistent sessions in rounds of at most ROUND connections
# (`shardmq-bench conn --clean-start false --session-expiry 3600 --hold-secs 1`, prefix s-R for
# round R, sources 127.0.0.2-127.0.0.20), then holds CLIENTS clean-start clients connected
# (prefix held) while it pages, with curl, through
#   GET /api/v1/sessions?limit=LIMIT   GET /api/v1/clients?limit=LIMIT
# (sessions twice) and the same with clientid=nomatch (a filter nothing matches), following
# `next` to the end.
# Per list: calls, items (against what was made: missing and duplicated client ids), answer
# time per call (curl's time_total: p50, max, sum), broker CPU (utime+stime from /proc, also
# per thread: shardmq-control serves the API, shard-N the shards), broker VmRSS before and
# after and its peak (VmHWM, reset through /proc/PID/clear_refs before each list). Prints a
# markdown table. A process here holds at most 20,000 descriptors, so CLIENTS and ROUND stay
# under that; the rest of the 100,000 are offline sessions.
# Env: SESSIONS=100000 CLIENTS=15000 ROUND=15000 LIMIT=1000 BROKER_CPUS=0-1,
# DEADLINE_SECS=1200 (the whole run; every curl has a 30 s timeout, every bench run one too),
# SKIP_BUILD=1 (use the binaries in target/release).
set -euo pipefail

SESSIONS=${SESSIONS:-100000}
CLIENTS=${CLIENTS:-15000}
ROUND=${ROUND:-15000}
LIMIT=${LIMIT:-1000}
DEADLINE_SECS=${DEADLINE_SECS:-1200}
BROKER_CPUS=${BROKER_CPUS:-0-1}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/shardmq-api-pages.XXXXXX)
IFADDR=127.0.0.2-127.0.0.20
CURL_TIMEOUT_S=30
# shellcheck source=bench/broker.sh
source "$ROOT/bench/broker.sh"
trap cleanup EXIT
DEADLINE=$((SECONDS + DEADLINE_SECS))

fail() { echo "api-pages: $*" >&2; exit 1; }
for n in "$CLIENTS" "$ROUND"; do
  (( n + 100 <= $(ulimit -n) )) || fail "$n connections need more than the $(ulimit -n) open files a process may have"
done
(( LIMIT >= 1 && LIMIT <= 1000 )) || fail "LIMIT: 1 to 1000"
# More calls than this for one list is a cursor that does not advance.
CALLS_MAX=$(( (SESSIONS + CLIENTS) / LIMIT + 100 ))

[[ -n "${SKIP_BUILD:-}" ]] || build
echo "work dir: $WORK; nproc $(nproc), Linux $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
API_PORT=$(free_port)
export SHARDMQ_STORAGE__DURABILITY=off BROKER_API="127.0.0.1:$API_PORT" BROKER_CPUS
start_broker
[[ "$PORT" != "$API_PORT" ]] || fail "the MQTT and API ports came out the same; run again"
API="http://127.0.0.1:$API_PORT"
sleep 1
rss_rest=$(rss_kib "$BROKER_PID")
for _ in $(seq 100); do
  curl -s --max-time 2 -o /dev/null "$API/api/v1/overview" && break
  sleep 0.1
done

established() { ss -Htn state established "( sport = :$PORT )" | wc -l; }
# wait_for SECS CMD...: until CMD succeeds, every 0.5 s; fails after SECS or at the deadline.
wait_for() {
  local end=$((SECONDS + $1)); shift
  until "$@"; do
    (( SECONDS < end && SECONDS < DEADLINE )) || return 1
    sleep 0.5
  done
}

# 1. The offline sessions, ROUND at a time; their ids go to expected.sessions.
: >"$WORK/expected.sessions"
made=0 round=0
while (( made < SESSIONS )); do
  round=$((round + 1)) n=$(( SESSIONS - made < ROUND ? SESSIONS - made : ROUND ))
  (( SECONDS < DEADLINE )) || fail "deadline passed while making sessions"
  out=$(timeout -k 5 300 "$BENCH" conn -h 127.0.0.1 -p "$PORT" -c "$n" --clean-start false \
    --session-expiry 3600 --hold-secs 1 --prefix "s-$round" --ifaddr "$IFADDR" --json \
    2>>"$WORK/rounds.err" | grep '"command":"conn"' | tail -1) || fail "round $round: conn failed (see $WORK/rounds.err)"
  succ=$(jq -r .connect_succ <<<"$out")
  [[ "$succ" == "$n" ]] || fail "round $round: $succ of $n connected: $out"
  echo "round $round: $n sessions, $(jq -r '.connect_rate | floor' <<<"$out") connects/s" >&2
  seq "$n" | sed "s/^/s-$round-conn-/" >>"$WORK/expected.sessions"
  made=$((made + n))
  check_broker
done
zero_established() { (( $(established) == 0 )); }
wait_for 60 zero_established || fail "$(established) connections still open after the rounds"

# 2. The held clients, connected until the end.
timeout -k 5 $((DEADLINE_SECS + 60)) "$BENCH" conn -h 127.0.0.1 -p "$PORT" -c "$CLIENTS" \
  --hold-secs "$DEADLINE_SECS" --prefix held --ifaddr "$IFADDR" --json \
  >"$WORK/held.out" 2>"$WORK/held.err" &
BENCH_PID=$!
all_held() { (( $(established) >= CLIENTS )); }
wait_for 300 all_held || fail "only $(established) of $CLIENTS held clients connected"
seq "$CLIENTS" | sed 's/^/held-conn-/' | sort >"$WORK/expected.clients"
sort "$WORK/expected.sessions" "$WORK/expected.clients" -o "$WORK/expected.sessions"
sleep 6   # the overview's shard figures are at most 5 s old
echo "overview: $(curl -s --max-time "$CURL_TIMEOUT_S" "$API/api/v1/overview" |
  jq -c '.nodes[] | {connections, sessions}')" >&2

ticks() { awk '{ print $14 + $15 }' "/proc/$BROKER_PID/stat"; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$BROKER_PID/status"; }
# CPU ticks (utime+stime) of the broker's threads, summed by name: "name ticks" lines.
thread_ticks() {
  local t
  for t in /proc/"$BROKER_PID"/task/*; do
    printf '%s %s\n' "$(tr ' ' _ <"$t/comm")" "$(sed 's/.*) //' "$t/stat" | awk '{ print $12 + $13 }')"
  done | awk '{ s[$1] += $2 } END { for (k in s) print k, s[k] }' | sort
}
c0=$(ticks); sleep 5; idle_ticks=$(( $(ticks) - c0 ))

# list NAME ROUTE [FILTER]: pages GET /api/v1/ROUTE?limit=LIMIT[&FILTER] to the end. Writes
# "status seconds items" per call to NAME.calls, "clientid connected" per item to NAME.items,
# and the broker's figures around it to NAME.figures (JSON).
list() {
  local name=$1 route=$2 filter=${3:-} cursor="" call out code t head rss0 c0
  : >"$WORK/$name.calls"; : >"$WORK/$name.items"
  thread_ticks >"$WORK/$name.threads0"
  rss0=$(rss_kib "$BROKER_PID") c0=$(ticks)
  echo 5 >"/proc/$BROKER_PID/clear_refs" || echo "cannot reset VmHWM: the peak is since start" >&2
  for ((call = 1; ; call++)); do
    (( call <= CALLS_MAX )) || fail "$name: more than $CALLS_MAX calls: the cursor does not advance"
    (( SECONDS < DEADLINE )) || fail "$name: deadline passed"
    out=$(curl -s -G --max-time "$CURL_TIMEOUT_S" -o "$WORK/page.json" -w '%{http_code} %{time_total}' \
      --data-urlencode "limit=$LIMIT" ${filter:+--data-urlencode "$filter"} \
      ${cursor:+--data-urlencode "cursor=$cursor"} "$API/api/v1/$route") || fail "$name: curl failed (rc $?), call $call"
    read -r code t <<<"$out"
    [[ "$code" == 200 ]] || fail "$name: call $call answered $code: $(head -c 300 "$WORK/page.json")"
    jq -r '"\(.next // "-") \(.data | length) \(.unreachable | length)",
           (.data[] | "\(.clientid) \(.connected | tostring)")' "$WORK/page.json" >"$WORK/page.txt"
    read -r cursor head unreachable <"$WORK/page.txt"
    (( unreachable == 0 )) || fail "$name: call $call: unreachable nodes in a one-node run"
    tail -n +2 "$WORK/page.txt" >>"$WORK/$name.items"
    echo "$code $t $head" >>"$WORK/$name.calls"
    [[ "$cursor" != - ]] || break
  done
  local c1 rss1 hwm
  c1=$(ticks) rss1=$(rss_kib "$BROKER_PID") hwm=$(hwm_kib)
  thread_ticks >"$WORK/$name.threads1"
  printf '{"cpu_ticks": %d, "rss0_kib": %d, "rss1_kib": %d, "hwm_kib": %d}\n' \
    $((c1 - c0)) "$rss0" "$rss1" "$hwm" >"$WORK/$name.figures"
  echo "$name: $call calls, $(wc -l <"$WORK/$name.items") items" >&2
}

list sessions sessions
list sessions-again sessions   # a second pass: does the broker keep what a pass cost?
list clients clients
list sessions-nomatch sessions clientid=nomatch
list clients-nomatch clients clientid=nomatch
check_broker

# The held clients must not have been dropped while the lists ran: the bench's last progress
# line (one a second) says how many are connected and how many the broker dropped.
sleep 1.5
held=$(grep 'connected=' "$WORK/held.err" | tail -1) || held="no progress line"

python3 - "$WORK" "$SESSIONS" "$CLIENTS" "$LIMIT" "$idle_ticks" "$held" "$rss_rest" <<'EOF'
import collections, json, os, sys
work, sessions, clients, limit, idle_ticks, held, rss_rest = sys.argv[1:]
sessions, clients, limit = int(sessions), int(clients), int(limit)
tck = os.sysconf("SC_CLK_TCK")
expected = {n: set(open(f"{work}/expected.{n}").read().split()) for n in ("sessions", "clients")}
def ticks(path):
    return {k: int(v) for k, v in (l.split() for l in open(path))}
rows, notes = [], []
for name, want in [("sessions", sessions + clients), ("sessions-again", sessions + clients),
                   ("clients", clients),
                   ("sessions-nomatch", 0), ("clients-nomatch", 0)]:
    calls = [l.split() for l in open(f"{work}/{name}.calls")]
    secs = sorted(float(c[1]) for c in calls)
    items = [l.split() for l in open(f"{work}/{name}.items")]
    ids = collections.Counter(i[0] for i in items)
    dup = sorted(k for k, v in ids.items() if v > 1)
    exp = expected[name.split("-")[0]] if want else set()
    missing, extra = sorted(exp - ids.keys()), sorted(ids.keys() - exp)
    for what, xs in [("missing", missing), ("duplicated", dup), ("not expected", extra)]:
        if xs:
            notes.append(f"{name}: {len(xs)} {what}, e.g. {', '.join(xs[:5])}")
    if name in ("sessions", "sessions-again"):
        online = sorted(i[0] for i in items if i[1] == "true")
        wrong = [i[0] for i in items if (i[1] == "true") != i[0].startswith("held-")]
        notes.append(f"{name}: {len(online)} listed as connected, {len(items) - len(online)} offline; "
                     f"{len(wrong)} with the wrong `connected`")
    f = json.load(open(f"{work}/{name}.figures"))
    t0, t1 = ticks(f"{work}/{name}.threads0"), ticks(f"{work}/{name}.threads1")
    by = {k: (t1.get(k, 0) - t0.get(k, 0)) / tck for k in t1}
    control = by.get("shardmq-control", 0.0)
    shards = sum(v for k, v in by.items() if k.startswith("shard-"))
    mib = lambda k: f"{k / 1024:,.1f}"
    filt = {"nomatch": " `clientid=nomatch`", "again": ", again"}.get(name.partition("-")[2], "")
    rows.append([
        f"`/api/v1/{name.split('-')[0]}?limit={limit}`{filt}", f"{len(calls)}",
        f"{len(items):,} ({want:,})", f"{len(missing)} / {len(dup)}",
        f"{secs[len(secs) // 2] * 1000:,.1f} / {secs[-1] * 1000:,.1f} ms", f"{sum(secs):,.2f} s",
        f"{f['cpu_ticks'] / tck:.2f} ({control:.2f} / {shards:.2f})",
        f"{mib(f['rss0_kib'])} → {mib(f['rss1_kib'])}", mib(f["hwm_kib"])])
hdr = ["list", "calls", "items (expected)", "missing / duplicated", "answer time per call p50 / max",
       "answer time total", "broker CPU s (control thread / shards)", "broker RSS MiB before → after",
       "peak RSS MiB (VmHWM) while listing"]
print("| " + " | ".join(hdr) + " |")
print("|" + " --- |" * len(hdr))
for r in rows:
    print("| " + " | ".join(r) + " |")
print()
print(f"- Broker RSS at rest (no session): {int(rss_rest) / 1024:,.1f} MiB")
print(f"- Broker idle CPU with the {clients:,} clients held, over 5 s before the lists: {int(idle_ticks) / tck:.2f} s")
print(f"- Held clients at the end, the bench's last progress line: `{held.strip()}`")
for n in notes:
    print(f"- {n}")
EOF
