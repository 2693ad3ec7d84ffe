#!/usr/bin/env bash
# Interop scenarios driven by mosquitto_pub / mosquitto_sub (mosquitto-clients 2.x), MQTT 3.1.1
# (-V mqttv311) and 5.0 (-V mqttv5, properties with -D), against a shardmq it starts itself.
#
# Prints one line per scenario, `@@ PASS|FAIL mosquitto <version>/<scenario> [:: detail]`, and
# exits non-zero if a scenario failed that tests/interop/xfail does not expect to fail.
#   INTEROP_BROKER    the broker binary (default target/debug/shardmq)
#   INTEROP_XFAIL  expected failures (default: the names listed in tests/interop/xfail)
#   INTEROP_ONLY   run only scenarios whose name contains this string
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${INTEROP_BROKER:-$root/target/debug/shardmq}"
client=mosquitto

# Bounds, in seconds: one client call, one wait for a message, a broker start.
call_s=10
wait_s=5
start_s=10

work="$(mktemp -d "${TMPDIR:-/tmp}/shardmq-interop-mosquitto.XXXXXX")"
broker_pid=
bg_pids=()

kill_bg() {
    local pid
    for pid in "${bg_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    bg_pids=()
}

cleanup() {
    kill_bg
    if [[ -n "$broker_pid" ]]; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if [[ -z "${INTEROP_XFAIL+set}" ]]; then
    INTEROP_XFAIL="$(sed -e 's/#.*//' "$here/xfail" | awk 'NF { print $1 }' | tr '\n' ' ')"
fi

# Whether <version>/<scenario> $1 is expected to fail.
expected_to_fail() {
    local full="$1" name="${1#*/}" entry
    for entry in $INTEROP_XFAIL; do
        case "$entry" in
        "$name" | "$full" | "$client:$name" | "$client:$full") return 0 ;;
        esac
    done
    return 1
}

# ---- the broker ------------------------------------------------------------------------------

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_broker() {
    local try
    for try in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 40000))
        port_in_use "$port" && continue
        # Its own storage directory: the suites' brokers run in parallel.
        SHARDMQ_LISTENER__BIND="127.0.0.1:$port" SHARDMQ_NODE__CPUS=0-1 SHARDMQ_API__LISTEN= \
            SHARDMQ_STORAGE__DIR="$work/data-$port" \
            RUST_LOG="warn,shardmq::node=info" NO_COLOR=1 \
            "$bin" >"$work/broker.log" 2>&1 &
        broker_pid=$!
        local deadline=$((SECONDS + start_s))
        while ((SECONDS < deadline)); do
            if ! kill -0 "$broker_pid" 2>/dev/null; then
                break
            fi
            if grep -qs "shardmq ready" "$work/broker.log" && port_in_use "$port"; then
                return 0
            fi
            sleep 0.05
        done
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
        broker_pid=
    done
    echo "shardmq ($bin) did not start; its log:" >&2
    cat "$work/broker.log" >&2 || true
    return 1
}

# ---- client helpers (each call bounded) ------------------------------------------------------

# The protocol version of the running scenario: v311 or v5.
ver=
vflag() { [[ "$ver" == v5 ]] && echo mqttv5 || echo mqttv311; }

pub() { timeout "$call_s" mosquitto_pub -h 127.0.0.1 -p "$port" -V "$(vflag)" "$@"; }
sub() { timeout "$call_s" mosquitto_sub -h 127.0.0.1 -p "$port" -V "$(vflag)" "$@"; }

fail() {
    echo "FAIL: $*"
    exit 1
}

# Message lines mosquitto_sub prints with -F "$fmt".
fmt='MSG|%t|%q|%r|%p'

# sub_bg OUT ARGS...: mosquitto_sub in the background (debug output and messages in OUT), bounded
# by -W; returns once its SUBACK arrived. Sets $last_pid.
sub_bg() {
    local out="$1"
    shift
    : >"$out"
    timeout "$call_s" stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$port" -V "$(vflag)" -d -W "$call_s" "$@" \
        >"$out" 2>&1 &
    last_pid=$!
    bg_pids+=("$last_pid")
    wait_for "$out" 'received SUBACK' 1 || fail "no SUBACK for mosquitto_sub $*: $(cat "$out")"
}

# wait_for FILE REGEX N: waits (bounded) until FILE has at least N lines matching REGEX.
wait_for() {
    local deadline=$((SECONDS + wait_s))
    while ((SECONDS <= deadline)); do
        local n
        n="$(grep -cE -- "$2" "$1" 2>/dev/null || true)"
        if ((${n:-0} >= $3)); then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# msgs FILE: the MSG| lines of FILE.
msgs() { grep '^MSG|' "$1" || true; }

# ---- scenarios -------------------------------------------------------------------------------

scenario_connect() {
    pub -d -i "mosq-$ver-connect" -t "connect/$ver" -m x >"$work/out" 2>&1 ||
        fail "mosquitto_pub: $(cat "$work/out")"
    grep -q 'received CONNACK (0)' "$work/out" || fail "no CONNACK (0): $(cat "$work/out")"
}

scenario_qos() {
    local q
    head -c 256 /dev/urandom >"$work/binary"
    local hex
    hex="$(od -An -v -tx1 "$work/binary" | tr -d ' \n')"
    sub_bg "$work/sub" -q 2 -t "qos/$ver/#" -F 'MSG|%t|%q|%x'
    for q in 0 1 2; do
        pub -d -q "$q" -t "qos/$ver/$q" -f "$work/binary" >"$work/pub" 2>&1 ||
            fail "mosquitto_pub -q $q: $(cat "$work/pub")"
        case "$q" in
        1) grep -q 'received PUBACK' "$work/pub" || fail "QoS 1 publish: no PUBACK: $(cat "$work/pub")" ;;
        2) grep -q 'received PUBCOMP' "$work/pub" || fail "QoS 2 publish: no PUBCOMP: $(cat "$work/pub")" ;;
        esac
        wait_for "$work/sub" "^MSG\\|qos/$ver/$q\\|" 1 || fail "QoS $q message not received: $(cat "$work/sub")"
        msgs "$work/sub" | grep -qxF "MSG|qos/$ver/$q|$q|$hex" ||
            fail "QoS $q message differs (expected QoS $q and the 256 payload bytes): $(msgs "$work/sub")"
    done
    # The subscriber's side of the QoS 2 handshake.
    grep -q 'sending PUBREC' "$work/sub" && grep -q 'sending PUBCOMP' "$work/sub" ||
        fail "subscriber did not complete the QoS 2 handshake: $(cat "$work/sub")"
}

scenario_retained() {
    local t="retained/$ver/t"
    pub -q 1 -r -t "$t" -m kept || fail "retained publish failed"
    sub -q 1 -t "$t" -C 1 -W "$wait_s" -F "$fmt" >"$work/sub1" 2>&1 || fail "no retained message: $(cat "$work/sub1")"
    grep -qxF "MSG|$t|1|1|kept" "$work/sub1" || fail "retained message differs: $(cat "$work/sub1")"
    pub -q 1 -r -n -t "$t" || fail "clearing publish failed"
    # A zero-length retained publish clears: a new subscriber gets nothing within 1 s.
    sub -q 1 -t "$t" -W 1 -F "$fmt" >"$work/sub2" 2>&1 || true
    [[ -z "$(msgs "$work/sub2")" ]] || fail "retained message not cleared: $(msgs "$work/sub2")"
}

scenario_will() {
    local t="will/$ver/t"
    sub_bg "$work/sub" -q 1 -t "$t" -F "$fmt"
    sub_bg "$work/willer" -i "mosq-$ver-willer" -t "will/$ver/unused" \
        --will-topic "$t" --will-payload "gone" --will-qos 1
    # Abrupt close: SIGKILL the client (not `timeout`, which would pass on a catchable signal),
    # so the kernel closes the socket without a DISCONNECT.
    local child
    child="$(pgrep -P "$last_pid" mosquitto_sub || true)"
    [[ -n "$child" ]] || fail "will client's process not found"
    kill -KILL "$child"
    wait_for "$work/sub" "^MSG\\|$t\\|" 1 || fail "will not delivered: $(cat "$work/sub")"
    msgs "$work/sub" | grep -qxF "MSG|$t|1|0|gone" || fail "will message differs: $(msgs "$work/sub")"
}

# Connect options of a persistent session: clean session off, and for 5.0 a session expiry.
persistent() {
    echo -c -i "$1"
    [[ "$ver" == v5 ]] && echo -x 60
    return 0
}

scenario_persistent_session() {
    local t="session/$ver/t" id="mosq-$ver-persist"
    # shellcheck disable=SC2046
    sub $(persistent "$id") -q 1 -t "$t" -E >"$work/sub1" 2>&1 || fail "subscribe failed: $(cat "$work/sub1")"
    pub -q 1 -t "$t" -m "while-offline" || fail "publish failed"
    # shellcheck disable=SC2046
    sub $(persistent "$id") -q 1 -t "$t" -C 1 -W "$wait_s" -F "$fmt" >"$work/sub2" 2>&1 ||
        fail "offline message not delivered on reconnect: $(cat "$work/sub2")"
    grep -qxF "MSG|$t|1|0|while-offline" "$work/sub2" || fail "offline message differs: $(cat "$work/sub2")"
}

scenario_shared_subscription() {
    local f="\$share/g/shared/$ver/t" n=10
    sub_bg "$work/m1" -q 1 -t "$f" -F "$fmt"
    grep -q 'Subscribed (mid: 1): 1$' "$work/m1" ||
        fail "SUBACK for $f does not grant QoS 1: $(grep -m1 '^Subscribed' "$work/m1" || cat "$work/m1")"
    sub_bg "$work/m2" -q 1 -t "$f" -F "$fmt"
    seq 1 "$n" | sed 's/^/m/' | pub -q 1 -t "shared/$ver/t" -l || fail "publish failed"
    local deadline=$((SECONDS + wait_s)) got
    while ((SECONDS <= deadline)); do
        got=$(($(msgs "$work/m1" | wc -l) + $(msgs "$work/m2" | wc -l)))
        ((got >= n)) && break
        sleep 0.05
    done
    sleep 0.3 # duplicates, if any, arrive now
    local all
    all="$(msgs "$work/m1"; msgs "$work/m2")"
    local expected
    expected="$(seq 1 "$n" | sed "s#^#MSG|shared/$ver/t|1|0|m#")"
    [[ "$(sort <<<"$all")" == "$(sort <<<"$expected")" ]] ||
        fail "expected each of m1..m$n exactly once across both members; member 1 got [$(msgs "$work/m1" | tr '\n' ' ')], member 2 got [$(msgs "$work/m2" | tr '\n' ' ')]; member 1 output: $(cat "$work/m1")"
}

scenario_topic_alias() {
    local t="alias/$ver/a/rather/long/topic/name"
    # Client to broker only: libmosquitto 2.0.11 drops the connection ("protocol error") on an
    # alias-only PUBLISH from the broker, so the subscriber does not allow aliases (-D connect
    # topic-alias-maximum); MQTT.js and rumqttc cover the broker-to-client direction.
    sub_bg "$work/sub" -q 1 -t "$t" -F 'MSG|%t|%p'
    # mosquitto_pub sends the topic with the alias the first time, then the alias alone.
    pub -d -q 1 -t "$t" -D publish topic-alias 1 --repeat 3 -m aliased >"$work/pub" 2>&1 ||
        fail "mosquitto_pub with a topic alias: $(cat "$work/pub")"
    grep -qE "sending PUBLISH \(d0, q1, r0, m3, '(\(null\))?'" "$work/pub" ||
        fail "mosquitto_pub did not send an alias-only PUBLISH: $(cat "$work/pub")"
    wait_for "$work/sub" "^MSG\\|$t\\|aliased$" 3 ||
        fail "expected 3 messages on $t: subscriber: $(cat "$work/sub"); publisher: $(cat "$work/pub")"
}

scenario_message_expiry() {
    local t="expiry/$ver/t" id="mosq-$ver-expiry"
    sub -c -i "$id" -x 60 -q 1 -t "$t" -E >"$work/sub1" 2>&1 || fail "subscribe failed: $(cat "$work/sub1")"
    pub -q 1 -t "$t" -m short -D publish message-expiry-interval 1 || fail "publish failed"
    pub -q 1 -t "$t" -m long -D publish message-expiry-interval 60 || fail "publish failed"
    sleep 2.5
    pub -q 1 -t "$t" -m marker || fail "publish failed"
    sub -c -i "$id" -x 60 -q 1 -t "$t" -C 2 -W "$wait_s" -F 'MSG|%p|%E' >"$work/sub2" 2>&1 ||
        fail "expected 2 messages on reconnect: $(cat "$work/sub2")"
    local got
    got="$(msgs "$work/sub2" | tr '\n' ' ')"
    [[ "$got" =~ ^MSG\|long\|([0-9]+)\ MSG\|marker\|\ $ ]] ||
        fail "expected [long (remaining expiry < 60), marker], the 1 s message expired; got [$got]"
    local remaining="${BASH_REMATCH[1]}"
    ((remaining >= 50 && remaining <= 58)) ||
        fail "remaining Message Expiry Interval $remaining after 2.5 s waiting; expected 57 or 58"
}

scenario_request_response() {
    local req="rr/$ver/request" resp="rr/$ver/response/mosq"
    sub_bg "$work/requester" -q 1 -t "$resp" -F 'MSG|%t|%D|%p'
    sub_bg "$work/responder" -q 1 -t "$req" -C 1 -F 'MSG|%R|%D|%p'
    pub -q 1 -t "$req" -m question -D publish response-topic "$resp" \
        -D publish correlation-data "corr-4711" || fail "request publish failed"
    wait_for "$work/responder" '^MSG\|' 1 || fail "request not received: $(cat "$work/responder")"
    local line r d
    line="$(msgs "$work/responder")"
    [[ "$line" == "MSG|$resp|corr-4711|question" ]] ||
        fail "request properties not passed through (want response topic $resp, correlation data corr-4711): $line"
    IFS='|' read -r _ r d _ <<<"$line"
    pub -q 1 -t "$r" -m answer -D publish correlation-data "$d" || fail "response publish failed"
    wait_for "$work/requester" '^MSG\|' 1 || fail "response not received: $(cat "$work/requester")"
    msgs "$work/requester" | grep -qxF "MSG|$resp|corr-4711|answer" ||
        fail "response differs: $(msgs "$work/requester")"
}

# ---- runner ----------------------------------------------------------------------------------

failed=0
run() {
    ver="$1"
    local name="$2" full="$1/$2"
    if [[ -n "${INTEROP_ONLY:-}" && "$full" != *"$INTEROP_ONLY"* ]]; then
        return 0
    fi
    rm -f "$work"/*.out "$work/sub" "$work/sub1" "$work/sub2" "$work/pub"
    set +e
    (
        # The scenario's background clients are stopped when it ends, however it ends.
        trap 'kill_bg' EXIT
        set -e
        "scenario_$name"
    ) >"$work/scenario.out" 2>&1
    local rc=$?
    set -e
    if ((rc == 0)); then
        echo "@@ PASS $client $full"
    else
        local detail
        detail="$(grep -m1 '^FAIL: ' "$work/scenario.out" | cut -c7- || true)"
        [[ -n "$detail" ]] || detail="$(tail -n 5 "$work/scenario.out" | tr '\n' ' ')"
        echo "@@ FAIL $client $full :: $detail"
        sed 's/^/    | /' "$work/scenario.out"
        expected_to_fail "$full" || failed=$((failed + 1))
    fi
}

start_broker
for v in v311 v5; do
    run "$v" connect
    run "$v" qos
    run "$v" retained
    run "$v" will
    run "$v" persistent_session
done
run v5 shared_subscription
run v5 topic_alias
run v5 message_expiry
run v5 request_response

exit $((failed > 0))
