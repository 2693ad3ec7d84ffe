#!/usr/bin/env bash
# The interop suite: the same MQTT scenarios driven by four clients no one here wrote, each
# against a shardmq it starts itself (127.0.0.1, a free port, SHARDMQ_NODE__CPUS=0-1):
#   mosquitto  mosquitto_pub / mosquitto_sub     tests/interop/mosquitto.sh
#   paho       paho-mqtt 2.x (Python)            tests/interop/paho_test.py
#   mqttjs     MQTT.js 5.x (node --test)         tests/interop/mqttjs_test.mjs
#   rumqttc    rumqttc (Rust, also in cargo test) tests/interop_rumqttc.rs
#   security   TLS, WebSocket, passwords, JWT, ACLs (mosquitto clients, paho, MQTT.js in Node
#              and in headless Chromium): tests/interop/security.sh, its own scenario list
# The four run in parallel. Prints one line per scenario per client (PASS, FAIL, XFAIL or
# XPASS), and last `N passed, M failed`; exits non-zero if anything failed. Expected failures
# (features not built yet) are listed in tests/interop/xfail. Install the clients first with
# tests/interop/install.sh (.ci/test does).
#   INTEROP_CLIENTS  which clients (default "mosquitto paho mqttjs rumqttc security")
#   INTEROP_ONLY     only scenarios whose name contains this, e.g. v5/ or will
#   INTEROP_XFAIL    expected failures, replacing tests/interop/xfail ("" expects all to pass)
#   INTEROP_BROKER   the broker binary (default: target/debug/shardmq, built here)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
here=tests/interop
started=$SECONDS

# Bound on one client's whole run, in seconds (each runs in well under 30 s).
runner_s=150

scenarios=(
    v311/connect v311/qos v311/retained v311/will v311/persistent_session
    v5/connect v5/qos v5/retained v5/will v5/persistent_session
    v5/shared_subscription v5/topic_alias v5/message_expiry v5/request_response
)
read -r -a clients <<<"${INTEROP_CLIENTS:-mosquitto paho mqttjs rumqttc security}"
only="${INTEROP_ONLY:-}"
export INTEROP_ONLY="$only"

# Expected failures: name -> why (from tests/interop/xfail, or INTEROP_XFAIL without reasons).
declare -A xfail_why=()
if [[ -n "${INTEROP_XFAIL+set}" ]]; then
    for name in $INTEROP_XFAIL; do xfail_why[$name]="listed in INTEROP_XFAIL"; done
else
    while read -r name why; do
        [[ -n "$name" ]] && xfail_why[$name]="$why"
    done < <(sed -e 's/#.*//' "$here/xfail")
fi
export INTEROP_XFAIL="${!xfail_why[*]}"

# The xfail entry matching client $1, scenario $2 (<version>/<name>), if any.
xfail_entry() {
    local client="$1" full="$2" name="${2#*/}" e
    for e in "$name" "$full" "$client:$name" "$client:$full"; do
        if [[ -n "${xfail_why[$e]+set}" ]]; then
            echo "$e"
            return
        fi
    done
}

# ---- build -----------------------------------------------------------------------------------
if [[ -z "${INTEROP_BROKER:-}" ]]; then
    cargo build --quiet -p shardmq
    export INTEROP_BROKER="$PWD/target/debug/shardmq"
fi
if [[ " ${clients[*]} " == *" rumqttc "* ]]; then
    # --workspace: the features of `cargo test --workspace`, so its build is reused.
    cargo test --quiet --workspace --test interop_rumqttc --no-run 2>/dev/null ||
        cargo test --workspace --test interop_rumqttc --no-run
fi

# ---- run the clients in parallel -------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/shardmq-interop.XXXXXX")"
trap 'rm -rf "$work"' EXIT

client_command() {
    case "$1" in
    mosquitto) echo bash "$here/mosquitto.sh" ;;
    paho) echo "$here/.venv/bin/python" "$here/paho_test.py" ;;
    mqttjs) echo node --test --test-reporter="./$here/js/reporter.mjs" \
        --test-reporter-destination=stdout "$here/mqttjs_test.mjs" ;;
    rumqttc) echo cargo test --workspace --test interop_rumqttc -- --nocapture "${only//\//_}" ;;
    security) echo bash "$here/security.sh" ;;
    *)
        echo "unknown client $1 (INTEROP_CLIENTS)" >&2
        return 1
        ;;
    esac
}

declare -A pids=() rcs=()
for c in "${clients[@]}"; do
    read -r -a cmd <<<"$(client_command "$c")"
    timeout -k 5 "$runner_s" "${cmd[@]}" >"$work/$c.log" 2>&1 &
    pids[$c]=$!
done
for c in "${clients[@]}"; do
    rc=0
    wait "${pids[$c]}" || rc=$?
    rcs[$c]=$rc
done

# ---- report ----------------------------------------------------------------------------------
passed=0 failed=0 xfailed=0 xpassed=()
line() {
    local text
    text="$(printf '%-5s  %-9s  %-24s  %s' "$@")"
    echo "${text%"${text##*[! ]}"}"
}

for c in "${clients[@]}"; do
    log="$work/$c.log"
    client_scenarios=("${scenarios[@]}")
    [[ "$c" == security ]] && mapfile -t client_scenarios < <(bash "$here/security.sh" --list)
    for full in "${client_scenarios[@]}"; do
        [[ "$full" == *"$only"* ]] || continue
        # The client's line for this scenario: "@@ PASS|FAIL <client> <full> [:: detail]"
        # (libtest may print its progress on the same line, before it).
        result="$(grep -m1 -oE "@@ (PASS|FAIL) $c $full( :: .*)?$" "$log" || true)"
        status="$(cut -d' ' -f2 <<<"$result")"
        detail=""
        [[ "$result" == *" :: "* ]] && detail="${result#* :: }"
        if [[ -z "$result" ]]; then
            status=FAIL
            detail="not reported: the $c runner exited with status ${rcs[$c]}"
            ((rcs[$c] == 124 || rcs[$c] == 137)) && detail+=" (timed out after ${runner_s} s)"
        fi
        entry="$(xfail_entry "$c" "$full")"
        if [[ "$status" == PASS && -z "$entry" ]]; then
            line PASS "$c" "$full"
            passed=$((passed + 1))
        elif [[ "$status" == PASS ]]; then
            line XPASS "$c" "$full" "— listed in $here/xfail ('$entry') but passes: delete that line"
            passed=$((passed + 1))
            xpassed+=("$entry")
        elif [[ -n "$entry" ]]; then
            line XFAIL "$c" "$full" "— ${xfail_why[$entry]} | got: $detail"
            xfailed=$((xfailed + 1))
        else
            line FAIL "$c" "$full" "— $detail"
            failed=$((failed + 1))
            if [[ -n "$result" ]]; then
                # The client's own account, indented under its @@ line.
                awk -v want="$result" '!on && index($0, want) { on = 1; next } on && /^    \| / { print; n++; if (n == 60) exit; next } on { exit }' "$log"
            else
                sed 's/^/    | /' "$log" | tail -n 30
            fi
        fi
    done
done

if ((${#xpassed[@]})); then
    echo "expected to fail but passed: $(printf '%s\n' "${xpassed[@]}" | sort -u | tr '\n' ' ')— delete from $here/xfail"
fi
echo "interop: ${#clients[@]} clients in $((SECONDS - started)) s; $xfailed expected failures ($here/xfail)"
echo "$passed passed, $failed failed"
((failed == 0))
