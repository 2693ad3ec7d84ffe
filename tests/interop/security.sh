#!/usr/bin/env bash
# Security interop: TLS, WebSocket, authentication and ACLs, driven by clients no one here wrote,
# against two shardmq brokers this script starts itself (127.0.0.1, free ports, 2 shards):
#   main  [listener] plain, [listener.tls] (verify_peer = "optional", peer_cert_as_username =
#         "cn"), [listener.ws], [listener.wss]; allow_anonymous = false, a password file written
#         by the real mosquitto_passwd ($7$ and $6$ lines) and by `shardmq passwd` (argon2id), a
#         Mosquitto acl_file, jwt_secret
#   mtls  [listener.tls] with verify_peer = "required"; anonymous allowed
# Certificates come from tests/interop/certs.sh (openssl). The clients:
#   mosquitto  mosquitto_pub / mosquitto_sub (TLS, client certificates, -u/-P, ACL codes); the
#              Debian 2.0.11 clients have no WebSocket transport, so they skip ws
#   paho       tests/interop/security_paho.py: tls_set, transport="websockets" (ws, wss), JWT
#              (PyJWT) in the password field
#   mqttjs     tests/interop/security_mqttjs.mjs: MQTT.js over mqtts:// and wss:// in Node
#   browser    tests/interop/browser/run.mjs: MQTT.js's browser bundle over ws:// in headless
#              Chromium (playwright-core, /usr/bin/chromium)
# Prints `@@ PASS|FAIL security <client>/<scenario> [:: detail]` per scenario (the failure's
# account indented with "    | " under it) and exits non-zero if a scenario failed that
# tests/interop/xfail does not expect to fail.
#   --list          prints the scenario names and exits
#   INTEROP_BROKER  the broker binary (default target/debug/shardmq)
#   INTEROP_XFAIL   expected failures (default: the names listed in tests/interop/xfail)
#   INTEROP_ONLY    run only scenarios whose name contains this string
#   SECURITY_KEEP=1 keeps the work directory (certificates, password and ACL files, broker logs)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${INTEROP_BROKER:-$root/target/debug/shardmq}"
client=security

mosquitto_scenarios=(
    mosquitto/tls_cafile mosquitto/tls_untrusted_server mosquitto/passwd_pbkdf2
    mosquitto/passwd_sha512 mosquitto/passwd_argon2 mosquitto/bad_password mosquitto/unknown_user
    mosquitto/anonymous_refused mosquitto/cert_required mosquitto/cert_refused
    mosquitto/cert_cn_username mosquitto/acl_subscribe mosquitto/acl_publish
    mosquitto/acl_pattern mosquitto/acl_retained mosquitto/acl_will
)
paho_scenarios=(
    paho/tls_cafile paho/ws paho/wss paho/ws_bad_password paho/jwt_hs256 paho/jwt_expired
    paho/jwt_wrong_secret
)
mqttjs_scenarios=(mqttjs/mqtts mqttjs/wss mqttjs/wss_untrusted mqttjs/wss_acl)
browser_scenarios=(browser/ws)
end_scenarios=(broker/healthy)
scenarios=("${mosquitto_scenarios[@]}" "${paho_scenarios[@]}" "${mqttjs_scenarios[@]}"
    "${browser_scenarios[@]}" "${end_scenarios[@]}")
if [[ "${1:-}" == --list ]]; then
    printf '%s\n' "${scenarios[@]}"
    exit 0
fi

# Bounds, in seconds: one client call, one wait for a message, a broker start, a sub-suite.
call_s=10
wait_s=5
start_s=15
suite_s=90

work="$(mktemp -d "${TMPDIR:-/tmp}/shardmq-interop-security.XXXXXX")"
broker_pids=()
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
    local pid
    for pid in "${broker_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${SECURITY_KEEP:-0}" == 1 ]]; then
        echo "security: work directory kept: $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

if [[ -z "${INTEROP_XFAIL+set}" ]]; then
    INTEROP_XFAIL="$(sed -e 's/#.*//' "$here/xfail" | awk 'NF { print $1 }' | tr '\n' ' ')"
fi

# Whether <client>/<scenario> $1 is expected to fail.
expected_to_fail() {
    local full="$1" name="${1#*/}" entry
    for entry in $INTEROP_XFAIL; do
        case "$entry" in
        "$name" | "$full" | "$client:$name" | "$client:$full") return 0 ;;
        esac
    done
    return 1
}

selected() { [[ -z "${INTEROP_ONLY:-}" || "$1" == *"$INTEROP_ONLY"* ]]; }

# ---- certificates, users, ACL ----------------------------------------------------------------

certs="$work/certs"
bash "$here/certs.sh" "$certs" >/dev/null

# Users and passwords. jwtuser has no line: its password is a JWT.
pwfile="$work/passwd"
setup_log="$work/setup.log"
: >"$setup_log"
mosquitto_passwd -c -b "$pwfile" alice alice-pw >>"$setup_log" 2>&1  # $7$ (PBKDF2-SHA512)
mosquitto_passwd -b "$pwfile" bob bob-pw >>"$setup_log" 2>&1
mosquitto_passwd -b "$pwfile" dave dave-pw >>"$setup_log" 2>&1
mosquitto_passwd -H sha512 -b "$pwfile" six six-pw >>"$setup_log" 2>&1 # $6$ (salted SHA-512)
# argon2id, by shardmq itself, password on stdin.
argon2_ok=1
printf 'carol-pw\n' | timeout "$call_s" "$bin" passwd "$pwfile" carol >>"$setup_log" 2>&1 || argon2_ok=0
grep -q '^alice:\$7\$' "$pwfile" && grep -q '^six:\$6\$' "$pwfile" || {
    echo "security: mosquitto_passwd did not write the expected \$7\$ and \$6\$ lines:" >&2
    cat "$pwfile" "$setup_log" >&2
    exit 1
}

jwt_secret="shardmq-interop-jwt-secret-0123456789"
aclfile="$work/acl"
cat >"$aclfile" <<'EOF'
# Mosquitto acl_file syntax. Rules before the first `user` line are for anonymous clients
# (none connect to this broker: allow_anonymous = false).
topic read public/#

user alice
topic readwrite alice/#
topic deny alice/secret/#
topic write shared/#
topic read bob/out

user bob
topic readwrite bob/#

user carol
topic readwrite carol/#

user six
topic readwrite six/#

# dave reads shared/#, but not shared/private/#
user dave
topic read shared/#
topic deny shared/private/#

# The CN of tests/interop/certs.sh's client certificate (peer_cert_as_username = "cn").
user certuser
topic readwrite certs/#

user jwtuser
topic readwrite jwt/#

# Every user: their own subtree, and a command topic per client id.
pattern readwrite users/%u/#
pattern read devices/%c/cmd
EOF

# ---- the brokers -----------------------------------------------------------------------------

# N free TCP ports on 127.0.0.1, distinct.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

read -r plain_port tls_port ws_port wss_port mtls_plain_port mtls_port <<<"$(free_ports 6)"

cat >"$work/main.toml" <<EOF
[node]
cpus = "0-1"
[listener]
bind = "127.0.0.1:$plain_port"
[listener.tls]
bind = "127.0.0.1:$tls_port"
cert_file = "$certs/server-chain.pem"
key_file = "$certs/server.key"
ca_file = "$certs/ca.pem"
verify_peer = "optional"
peer_cert_as_username = "cn"
[listener.ws]
bind = "127.0.0.1:$ws_port"
path = "/mqtt"
[listener.wss]
bind = "127.0.0.1:$wss_port"
path = "/mqtt"
[auth]
allow_anonymous = false
password_file = "$pwfile"
acl_file = "$aclfile"
jwt_secret = "$jwt_secret"
[api]
listen = ""
[storage]
dir = "$work/main-data"
EOF

cat >"$work/mtls.toml" <<EOF
[node]
cpus = "0-1"
[listener]
bind = "127.0.0.1:$mtls_plain_port"
[listener.tls]
bind = "127.0.0.1:$mtls_port"
cert_file = "$certs/server.pem"
key_file = "$certs/server.key"
ca_file = "$certs/ca.pem"
verify_peer = "required"
[auth]
allow_anonymous = true
[api]
listen = ""
[storage]
dir = "$work/mtls-data"
EOF

# start_broker NAME PORT...: starts shardmq with $work/NAME.toml; waits until it is ready and
# every PORT accepts. Logs to $work/NAME.log.
start_broker() {
    local name="$1" p
    shift
    env $(env | sed -n 's/^\(SHARDMQ_[^=]*\)=.*/-u \1/p') RUST_LOG="warn,shardmq::node=info" \
        NO_COLOR=1 "$bin" --config "$work/$name.toml" >"$work/$name.log" 2>&1 &
    local pid=$!
    broker_pids+=("$pid")
    local deadline=$((SECONDS + start_s))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || break
        if grep -qs "shardmq ready" "$work/$name.log"; then
            local all=1
            for p in "$@"; do port_in_use "$p" || all=0; done
            ((all)) && return 0
        fi
        sleep 0.05
    done
    return 1
}

brokers_ok=1
start_broker main "$plain_port" "$tls_port" "$ws_port" "$wss_port" || brokers_ok=0
start_broker mtls "$mtls_plain_port" "$mtls_port" || brokers_ok=0

if ((brokers_ok == 0)); then
    failed=0
    for full in "${scenarios[@]}"; do
        selected "$full" || continue
        echo "@@ FAIL $client $full :: a broker did not start with the security settings"
        for name in main mtls; do
            echo "    | ---- $name.toml broker log (tail) ----"
            tail -n 8 "$work/$name.log" 2>/dev/null | sed 's/^/    | /'
        done
        expected_to_fail "$full" || failed=$((failed + 1))
    done
    exit $((failed > 0))
fi

# ---- mosquitto client helpers (each call bounded) ---------------------------------------------

fail() {
    echo "FAIL: $*"
    exit 1
}

# The TLS options of a client that trusts the test CA.
tls=(--cafile "$certs/ca.pem")
as_alice=(-u alice -P alice-pw)

# pub|sub VERSION ARGS...: mosquitto_pub / mosquitto_sub against the main broker's plain port
# (TLS ones pass -p and the TLS options themselves; a later -p wins).
pub() {
    local v="$1"
    shift
    timeout "$call_s" mosquitto_pub -h localhost -p "$plain_port" -V "$v" "$@"
}
sub() {
    local v="$1"
    shift
    timeout "$call_s" mosquitto_sub -h localhost -p "$plain_port" -V "$v" "$@"
}

# sub_bg OUT VERSION ARGS...: mosquitto_sub in the background (debug output and messages in
# OUT), bounded by -W; returns once its SUBACK arrived. Sets $last_pid.
sub_bg() {
    local out="$1" v="$2"
    shift 2
    : >"$out"
    timeout "$call_s" stdbuf -oL mosquitto_sub -h localhost -p "$plain_port" -V "$v" -d \
        -W "$call_s" -F 'MSG|%t|%p' "$@" >"$out" 2>&1 &
    last_pid=$!
    bg_pids+=("$last_pid")
    wait_for "$out" 'received SUBACK' 1 || fail "no SUBACK for mosquitto_sub $*: $(cat "$out")"
}

# wait_for FILE REGEX N: waits (bounded) until FILE has at least N lines matching REGEX.
wait_for() {
    local deadline=$((SECONDS + wait_s)) n
    while ((SECONDS <= deadline)); do
        n="$(grep -cE -- "$2" "$1" 2>/dev/null || true)"
        ((${n:-0} >= $3)) && return 0
        sleep 0.05
    done
    return 1
}

msgs() { grep '^MSG|' "$1" || true; }

# A publish/subscribe round trip: a subscriber with SUB_ARGS (an array name) on filter $3, a
# publisher with PUB_ARGS on topic $4; both with protocol version $5.
roundtrip() {
    local -n sub_args="$1" pub_args="$2"
    local filter="$3" topic="$4" v="$5" body="rt-$RANDOM"
    sub_bg "$work/rt-sub" "$v" "${sub_args[@]}" -q 1 -t "$filter"
    grep -qE 'Subscribed \(mid: 1\): 1$' "$work/rt-sub" ||
        fail "SUBACK for $filter does not grant QoS 1: $(cat "$work/rt-sub")"
    pub "$v" -d "${pub_args[@]}" -q 1 -t "$topic" -m "$body" >"$work/rt-pub" 2>&1 ||
        fail "mosquitto_pub ${pub_args[*]} -t $topic (rc $?): $(cat "$work/rt-pub")"
    grep -q 'received PUBACK (Mid: 1, RC:0)' "$work/rt-pub" ||
        fail "publish to $topic: no PUBACK with RC 0: $(cat "$work/rt-pub")"
    wait_for "$work/rt-sub" "^MSG\\|$topic\\|$body\$" 1 ||
        fail "message on $topic not delivered: $(cat "$work/rt-sub")"
}

# refused CODE TEXT VERSION ARGS...: mosquitto_pub must exit with status CODE (libmosquitto's
# exit status is the CONNACK code) and print TEXT (any case: 2.0.11 prints "bad user name or
# password" for 3.1.1 and "Bad User Name or Password" for 5.0).
refused() {
    local code="$1" text="$2" v="$3" rc=0
    shift 3
    pub "$v" "$@" -t refused/x -m x >"$work/refused" 2>&1 || rc=$?
    ((rc == code)) && grep -qiF "$text" "$work/refused" ||
        fail "mosquitto_pub -V $v $*: expected exit status $code and \"$text\", got status $rc: $(cat "$work/refused")"
}

# ---- mosquitto scenarios ---------------------------------------------------------------------

scenario_tls_cafile() {
    local v
    for v in mqttv311 mqttv5; do
        local s=(-p "$tls_port" "${tls[@]}" "${as_alice[@]}") p=(-p "$tls_port" "${tls[@]}" "${as_alice[@]}")
        roundtrip s p "alice/tls/#" "alice/tls/$v" "$v"
    done
}

scenario_tls_untrusted_server() {
    # The client checks the server against a CA that did not sign it: the handshake fails.
    local rc=0
    pub mqttv311 -p "$tls_port" --cafile "$certs/other-ca.pem" "${as_alice[@]}" -t alice/x -m x \
        >"$work/out" 2>&1 || rc=$?
    ((rc != 0)) && grep -qi 'certificate verify failed\|TLS error' "$work/out" ||
        fail "a client trusting another CA connected (status $rc): $(cat "$work/out")"
}

scenario_passwd_pbkdf2() {
    # bob's line was written by mosquitto_passwd's default, PBKDF2-SHA512 ($7$).
    local s=(-u bob -P bob-pw) p=(-u bob -P bob-pw)
    roundtrip s p "bob/#" "bob/pbkdf2" mqttv311
    roundtrip s p "bob/#" "bob/pbkdf2" mqttv5
}

scenario_passwd_sha512() {
    local s=(-u six -P six-pw) p=(-u six -P six-pw)
    roundtrip s p "six/#" "six/sha512" mqttv311
    roundtrip s p "six/#" "six/sha512" mqttv5
}

scenario_passwd_argon2() {
    ((argon2_ok)) || fail "\`shardmq passwd FILE carol\` (password on stdin) failed: $(cat "$setup_log")"
    grep -q '^carol:\$argon2id\$' "$pwfile" ||
        fail "shardmq passwd did not write an argon2id line for carol: $(grep '^carol:' "$pwfile" || echo none)"
    local s=(-u carol -P carol-pw) p=(-u carol -P carol-pw)
    roundtrip s p "carol/#" "carol/argon2" mqttv311
    roundtrip s p "carol/#" "carol/argon2" mqttv5
}

scenario_bad_password() {
    refused 4 "bad user name or password" mqttv311 -u alice -P wrong
    refused 134 "Bad user name or password" mqttv5 -u alice -P wrong
    refused 4 "bad user name or password" mqttv311 -p "$tls_port" "${tls[@]}" -u carol -P alice-pw
    refused 134 "Bad user name or password" mqttv5 -p "$tls_port" "${tls[@]}" -u six -P wrong
}

scenario_unknown_user() {
    refused 4 "bad user name or password" mqttv311 -u mallory -P whatever
    refused 134 "Bad user name or password" mqttv5 -u mallory -P whatever
}

scenario_anonymous_refused() {
    refused 5 "not authorised" mqttv311
    refused 135 "Not authorized" mqttv5
    refused 5 "not authorised" mqttv311 -p "$tls_port" "${tls[@]}"
}

scenario_cert_required() {
    # verify_peer = "required": a client certificate by the CA connects (anonymous allowed).
    local v
    for v in mqttv311 mqttv5; do
        timeout "$call_s" stdbuf -oL mosquitto_sub -h localhost -p "$mtls_port" -V "$v" "${tls[@]}" \
            --cert "$certs/client.pem" --key "$certs/client.key" -d -W "$call_s" -C 1 \
            -F 'MSG|%t|%p' -q 1 -t "mtls/$v" >"$work/sub" 2>&1 &
        bg_pids+=("$!")
        wait_for "$work/sub" 'received SUBACK' 1 || fail "no SUBACK over mutual TLS: $(cat "$work/sub")"
        timeout "$call_s" mosquitto_pub -h localhost -p "$mtls_port" -V "$v" "${tls[@]}" \
            --cert "$certs/client.pem" --key "$certs/client.key" -q 1 -t "mtls/$v" -m hello \
            >"$work/pub" 2>&1 || fail "mosquitto_pub with --cert/--key: $(cat "$work/pub")"
        wait_for "$work/sub" "^MSG\\|mtls/$v\\|hello\$" 1 || fail "not delivered over mutual TLS: $(cat "$work/sub")"
    done
}

scenario_cert_refused() {
    # verify_peer = "required": no certificate, an expired one, one by another CA: each refused
    # in the handshake (the client reports a TLS error or a lost connection), and the broker
    # logs a warning for each.
    local what rc warns_before warns_after
    for what in none expired rogue; do
        local args=()
        [[ "$what" != none ]] && args=(--cert "$certs/$what.pem" --key "$certs/$what.key")
        warns_before="$(grep -c ' WARN ' "$work/mtls.log" || true)"
        rc=0
        timeout "$call_s" mosquitto_pub -h localhost -p "$mtls_port" -V mqttv311 "${tls[@]}" \
            "${args[@]}" -q 1 -t mtls/x -m x >"$work/out" 2>&1 || rc=$?
        ((rc != 0 && rc != 124)) ||
            fail "client certificate '$what' on a verify_peer = required listener: status $rc: $(cat "$work/out")"
        grep -q 'received CONNACK (0)\|received PUBACK' "$work/out" &&
            fail "client certificate '$what' was accepted: $(cat "$work/out")"
        local deadline=$((SECONDS + wait_s))
        while :; do
            warns_after="$(grep -c ' WARN ' "$work/mtls.log" || true)"
            ((warns_after > warns_before)) && break
            ((SECONDS > deadline)) && fail "no WARN line in the broker log for client certificate '$what'"
            sleep 0.05
        done
    done
}

scenario_cert_cn_username() {
    # peer_cert_as_username = "cn": the certificate's CN (certuser) is the username, and the
    # certificate authenticates (allow_anonymous = false, no -u/-P).
    local v cert=(-p "$tls_port" "${tls[@]}" --cert "$certs/client.pem" --key "$certs/client.key")
    for v in mqttv311 mqttv5; do
        local s=("${cert[@]}") p=("${cert[@]}")
        roundtrip s p "certs/#" "certs/$v" "$v"
    done
    # certuser may not write alice/x: v5 PUBACK 0x87.
    pub mqttv5 -d "${cert[@]}" -q 1 -t alice/x -m x >"$work/out" 2>&1 || true
    grep -q 'received PUBACK (Mid: 1, RC:135)' "$work/out" ||
        fail "certuser's publish to alice/x: expected PUBACK 0x87 (135): $(cat "$work/out")"
    # A -u given with the certificate does not win over the CN.
    pub mqttv5 -d "${cert[@]}" -u alice -P alice-pw -q 1 -t alice/x -m x >"$work/out" 2>&1 || true
    grep -q 'received PUBACK (Mid: 1, RC:0)' "$work/out" &&
        fail "with a client certificate, -u alice got alice's rights (the CN must be the username): $(cat "$work/out")"
    return 0
}

scenario_acl_subscribe() {
    # Not allowed: bob/# (no rule), alice/secret/x (deny). SUBACK 0x80 (3.1.1), 0x87 (5.0).
    local v code filter
    for v in mqttv311 mqttv5; do
        [[ "$v" == mqttv5 ]] && code=135 || code=128
        for filter in "bob/#" "alice/secret/x"; do
            sub "$v" "${as_alice[@]}" -d -q 1 -t "$filter" -W 2 >"$work/out" 2>&1 || true
            grep -qE "Subscribed \(mid: 1\): $code\$" "$work/out" ||
                fail "alice subscribing to $filter ($v): expected SUBACK $code: $(cat "$work/out")"
        done
        # Allowed in the same broker: alice/#.
        sub "$v" "${as_alice[@]}" -d -q 1 -t "alice/#" -W 1 >"$work/out" 2>&1 || true
        grep -qE 'Subscribed \(mid: 1\): 1$' "$work/out" ||
            fail "alice subscribing to alice/# ($v): expected QoS 1 granted: $(cat "$work/out")"
    done
}

scenario_acl_publish() {
    # bob listens on bob/#; alice may not write there.
    local s=(-u bob -P bob-pw)
    sub_bg "$work/bob" mqttv5 "${s[@]}" -q 1 -t "bob/#"
    pub mqttv5 -d "${as_alice[@]}" -q 1 -t bob/from-alice-v5 -m denied5 >"$work/out" 2>&1 || true
    grep -q 'received PUBACK (Mid: 1, RC:135)' "$work/out" ||
        fail "alice's v5 publish to bob/x: expected PUBACK 0x87 (135): $(cat "$work/out")"
    # 3.1.1: dropped silently (PUBACK, no delivery).
    pub mqttv311 -d "${as_alice[@]}" -q 1 -t bob/from-alice-v311 -m denied311 >"$work/out" 2>&1 ||
        fail "alice's 3.1.1 publish to bob/x: expected a PUBACK and no disconnect: $(cat "$work/out")"
    grep -q 'received PUBACK' "$work/out" || fail "alice's 3.1.1 publish: no PUBACK: $(cat "$work/out")"
    # bob's own message arrives; the two denied ones did not (they were sent before it).
    pub mqttv5 -u bob -P bob-pw -q 1 -t bob/marker -m marker >/dev/null 2>&1 || fail "bob's publish failed"
    wait_for "$work/bob" '^MSG\|bob/marker\|marker$' 1 || fail "bob's own message not delivered: $(cat "$work/bob")"
    msgs "$work/bob" | grep -q 'denied' && fail "a denied publish was delivered: $(msgs "$work/bob")"
    return 0
}

scenario_acl_pattern() {
    # pattern readwrite users/%u/#: bob in users/bob/..., not in users/alice/...
    local s=(-u bob -P bob-pw) p=(-u bob -P bob-pw)
    roundtrip s p "users/bob/#" "users/bob/x" mqttv5
    sub mqttv5 -u bob -P bob-pw -d -q 1 -t "users/alice/#" -W 2 >"$work/out" 2>&1 || true
    grep -qE 'Subscribed \(mid: 1\): 135$' "$work/out" ||
        fail "bob subscribing to users/alice/#: expected SUBACK 0x87: $(cat "$work/out")"
    # pattern read devices/%c/cmd: the client id, read only.
    sub mqttv311 -u bob -P bob-pw -i dev-42 -d -q 1 -t "devices/dev-42/cmd" -W 1 >"$work/out" 2>&1 || true
    grep -qE 'Subscribed \(mid: 1\): 1$' "$work/out" ||
        fail "client dev-42 subscribing to devices/dev-42/cmd: expected QoS 1: $(cat "$work/out")"
    sub mqttv311 -u bob -P bob-pw -i dev-43 -d -q 1 -t "devices/dev-42/cmd" -W 2 >"$work/out" 2>&1 || true
    grep -qE 'Subscribed \(mid: 1\): 128$' "$work/out" ||
        fail "client dev-43 subscribing to devices/dev-42/cmd: expected SUBACK 0x80: $(cat "$work/out")"
}

scenario_acl_retained() {
    # alice retains on shared/open/r and shared/private/r; dave (read shared/#, deny
    # shared/private/#) subscribes to shared/# and gets only the first.
    pub mqttv311 "${as_alice[@]}" -q 1 -r -t shared/open/r -m open-retained || fail "retained publish failed"
    pub mqttv311 "${as_alice[@]}" -q 1 -r -t shared/private/r -m private-retained || fail "retained publish failed"
    sub mqttv5 -u dave -P dave-pw -q 1 -t "shared/#" -W 2 -F 'MSG|%t|%p' >"$work/out" 2>&1 || true
    msgs "$work/out" | grep -qxF 'MSG|shared/open/r|open-retained' ||
        fail "dave did not get the retained message he may read: $(cat "$work/out")"
    msgs "$work/out" | grep -q private && fail "dave got a retained message he may not read: $(msgs "$work/out")"
    return 0
}

scenario_acl_will() {
    # Two clients with wills, killed without DISCONNECT; dave may read only the open one.
    sub_bg "$work/dave" mqttv311 -u dave -P dave-pw -q 1 -t "shared/#"
    local t
    for t in shared/private/will shared/open/will; do
        sub_bg "$work/willer" mqttv311 "${as_alice[@]}" -t alice/unused \
            --will-topic "$t" --will-payload "will:$t" --will-qos 1
        local child
        child="$(pgrep -P "$last_pid" mosquitto_sub || true)"
        [[ -n "$child" ]] || fail "will client's process not found"
        kill -KILL "$child"
    done
    wait_for "$work/dave" '^MSG\|shared/open/will\|will:shared/open/will$' 1 ||
        fail "the will dave may read was not delivered: $(cat "$work/dave")"
    sleep 0.3
    msgs "$work/dave" | grep -q private && fail "dave got a will he may not read: $(msgs "$work/dave")"
    return 0
}

# ---- runner ----------------------------------------------------------------------------------

failed=0
report() { # report FULL RC OUTPUT_FILE
    local full="$1" rc="$2" out="$3" detail
    if ((rc == 0)); then
        echo "@@ PASS $client $full"
    else
        detail="$(grep -m1 '^FAIL: ' "$out" | cut -c7- || true)"
        [[ -n "$detail" ]] || detail="$(tail -n 5 "$out" | tr '\n' ' ')"
        echo "@@ FAIL $client $full :: ${detail:0:600}"
        sed 's/^/    | /' "$out"
        expected_to_fail "$full" || failed=$((failed + 1))
    fi
}

run_mosquitto() {
    local full name rc
    for full in "${mosquitto_scenarios[@]}"; do
        selected "$full" || continue
        name="${full#*/}"
        set +e
        (
            trap 'kill_bg' EXIT
            set -e
            "scenario_$name"
        ) >"$work/scenario.out" 2>&1
        rc=$?
        set -e
        report "$full" "$rc" "$work/scenario.out"
    done
}

# The other clients run in parallel with the mosquitto scenarios; each prints its own @@ lines.
export SECURITY_CERTS="$certs" SECURITY_JWT_SECRET="$jwt_secret"
export SECURITY_PLAIN_PORT="$plain_port" SECURITY_TLS_PORT="$tls_port"
export SECURITY_WS_PORT="$ws_port" SECURITY_WSS_PORT="$wss_port"
export INTEROP_XFAIL INTEROP_ONLY="${INTEROP_ONLY:-}"
declare -A suite_pid=()
suite_cmd() {
    case "$1" in
    paho) echo "$here/.venv/bin/python" "$here/security_paho.py" ;;
    mqttjs) echo node "$here/security_mqttjs.mjs" ;;
    browser) echo node "$here/browser/run.mjs" ;;
    esac
}
for suite in paho mqttjs browser; do
    read -r -a cmd <<<"$(suite_cmd "$suite")"
    timeout -k 5 "$suite_s" "${cmd[@]}" >"$work/$suite.out" 2>&1 &
    suite_pid[$suite]=$!
done

run_mosquitto

for suite in paho mqttjs browser; do
    rc=0
    wait "${suite_pid[$suite]}" || rc=$?
    names_var="${suite}_scenarios[@]"
    cat "$work/$suite.out" | grep -E '^(@@ |    \| )' || true
    for full in "${!names_var}"; do
        selected "$full" || continue
        if ! grep -qE "^@@ (PASS|FAIL) $client $full( |$)" "$work/$suite.out"; then
            echo "@@ FAIL $client $full :: not reported: the $suite runner exited with status $rc"
            grep -vE '^(@@ |    \| )' "$work/$suite.out" | tail -n 20 | sed 's/^/    | /'
            expected_to_fail "$full" || failed=$((failed + 1))
        elif grep -qE "^@@ FAIL $client $full( |$)" "$work/$suite.out"; then
            expected_to_fail "$full" || failed=$((failed + 1))
        fi
    done
done

# Both brokers alive, no panic, and the plain listener still serves after all of the above.
if selected broker/healthy; then
    set +e
    (
        set -e
        for pid in "${broker_pids[@]}"; do
            kill -0 "$pid" 2>/dev/null || fail "a broker exited: $(tail -n 20 "$work"/*.log)"
        done
        grep -h -E 'panicked|ERROR' "$work/main.log" "$work/mtls.log" &&
            fail "panic or ERROR lines in a broker log (above)"
        s=(-u bob -P bob-pw) p=(-u bob -P bob-pw)
        roundtrip s p "bob/#" "bob/final" mqttv311
    ) >"$work/scenario.out" 2>&1
    rc=$?
    set -e
    report broker/healthy "$rc" "$work/scenario.out"
fi

exit $((failed > 0))
