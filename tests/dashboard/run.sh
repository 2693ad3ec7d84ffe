#!/usr/bin/env bash
# The dashboard in a real browser. Starts shardmq nodes on 127.0.0.1 (free ports), each with an
# [api] listener and a [listener.ws]: by default a two-node cluster, node 1 a core and node 2 a
# replicant (one shard each); DASHBOARD_NODES=1 starts one standalone node (two shards).
# Real clients connect to node 1:
#   mosquitto_pub -r  two retained messages, dash/retained/1 and dash/retained/2
#   dash-sub          mosquitto_sub -V 5 -i dash-sub -t 'dash/#', kept running (the one to kick)
#   dash-check        mosquitto_sub -i dash-check -t dash/ui -C 1 (gets the browser's publish)
# and to the last node:
#   dash-load         mosquitto_pub -l: 10 messages a second to dash/load, for the charts
# Then tests/dashboard/run.mjs drives headless Chromium (Debian's /usr/bin/chromium, through
# playwright-core from tests/dashboard/node_modules) through every page of the dashboard the
# last node serves at /, so that with two nodes the lists, the kick and the WebSocket publish
# cross the cluster. Prints `PASS|FAIL dashboard/<check> [:: detail]` per check and exits
# non-zero if one failed. Bounds: 10 s for the nodes to start, 65 s for the browser run.
# Install playwright-core and the clients first with tests/interop/install.sh (.ci/test does).
#   DASHBOARD_BROKER         the broker binary (default target/debug/shardmq, built here)
#   DASHBOARD_NODES          2 (default) or 1
#   DASHBOARD_SCREENSHOTS=1  writes a screenshot of each page to docs/dashboard/<page>.png
#   DASHBOARD_KEEP=1         keeps the work directory (configuration, node and client logs)
#   CHROMIUM                 the browser binary (default /usr/bin/chromium)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root="$PWD"
here="$root/tests/dashboard"

# Bounds, in seconds (at most 85 in all): the nodes' start, one mosquitto_pub, the browser run.
start_s=10
call_s=5
browser_s=65

nodes="${DASHBOARD_NODES:-2}"
[[ "$nodes" == 1 || "$nodes" == 2 ]] || {
    echo "FAIL dashboard/setup :: DASHBOARD_NODES must be 1 or 2, not $nodes"
    exit 1
}
if [[ -z "${DASHBOARD_BROKER:-}" ]]; then
    cargo build --quiet -p shardmq
    DASHBOARD_BROKER="$root/target/debug/shardmq"
fi
[[ -x "$DASHBOARD_BROKER" ]] || {
    echo "FAIL dashboard/setup :: no broker binary at $DASHBOARD_BROKER"
    exit 1
}
[[ -f "$here/node_modules/playwright-core/package.json" ]] || {
    echo "FAIL dashboard/setup :: playwright-core missing: run tests/interop/install.sh"
    exit 1
}

work="$(mktemp -d "${TMPDIR:-/tmp}/shardmq-dashboard.XXXXXX")"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${DASHBOARD_KEEP:-0}" == 1 ]]; then
        echo "dashboard: work directory kept: $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# free_ports N [tcp|udp]: N distinct free ports on 127.0.0.1.
free_ports() {
    python3 - "$1" "${2:-tcp}" <<'EOF'
import socket, sys
kind = socket.SOCK_DGRAM if sys.argv[2] == "udp" else socket.SOCK_STREAM
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

read -r -a mqtt_port <<<"$(free_ports "$nodes")"
read -r -a ws_port <<<"$(free_ports "$nodes")"
read -r -a api_port <<<"$(free_ports "$nodes")"
read -r -a quic_port <<<"$(free_ports "$nodes" udp)"

# node_config I: the configuration of node I+1 (I from 0).
node_config() {
    local i="$1" role=core cpus="$1"
    ((i == 0)) || role=replicant
    ((nodes == 1)) && cpus=0-1
    cat <<EOF
[node]
name = "shardmq@dashboard-$((i + 1))"
cpus = "$cpus"
role = "$role"
[listener]
bind = "127.0.0.1:${mqtt_port[$i]}"
[listener.ws]
bind = "127.0.0.1:${ws_port[$i]}"
path = "/mqtt"
[api]
listen = "127.0.0.1:${api_port[$i]}"
keys_file = "$work/api_keys.json"
allow_unauthenticated_loopback = true
[storage]
dir = "$work/data-$((i + 1))"
EOF
    ((nodes > 1)) || return 0
    cat <<EOF
[cluster]
enabled = true
node_id = $((i + 1))
listen = "127.0.0.1:${quic_port[$i]}"
seeds = ["1@127.0.0.1:${quic_port[0]}"]
cookie = "dashboard-test-cookie-0123456789"
data_dir = "$work/cluster-$((i + 1))"
heartbeat_ms = 100
election_timeout_ms = 500
replica_persist_ms = 200
EOF
}

# The environment's SHARDMQ_* variables would override the files: leave them out.
read -r -a unset_env <<<"$(env | sed -n 's/^\(SHARDMQ_[^=]*\)=.*/-u \1/p' | tr '\n' ' ')"
node_pids=()
for ((i = 0; i < nodes; i++)); do
    node_config "$i" >"$work/node-$((i + 1)).toml"
    env "${unset_env[@]}" RUST_LOG="warn,shardmq::node=info" NO_COLOR=1 \
        "$DASHBOARD_BROKER" --config "$work/node-$((i + 1)).toml" >"$work/node-$((i + 1)).log" 2>&1 &
    node_pids+=($!)
    pids+=($!)
done
deadline=$((SECONDS + start_s))
for ((i = 0; i < nodes; i++)); do
    ready=0
    while ((SECONDS < deadline)); do
        kill -0 "${node_pids[$i]}" 2>/dev/null || break
        if grep -qs "shardmq ready" "$work/node-$((i + 1)).log" && port_in_use "${mqtt_port[$i]}" &&
            port_in_use "${ws_port[$i]}" && port_in_use "${api_port[$i]}"; then
            ready=1
            break
        fi
        sleep 0.05
    done
    if ((ready == 0)); then
        echo "FAIL dashboard/setup :: the nodes did not start within ${start_s} s (node $((i + 1)))"
        tail -n 20 "$work/node-$((i + 1)).log" | sed 's/^/    | /'
        exit 1
    fi
done
last=$((nodes - 1))

# Real clients. dash-sub speaks MQTT 5 so that a kick reaches it as DISCONNECT 0x98 (and
# mosquitto_sub exits on a DISCONNECT); -W bounds each should the run hang.
for i in 1 2; do
    timeout "$call_s" mosquitto_pub -h 127.0.0.1 -p "${mqtt_port[0]}" -i "dash-pub-$i" -r -q 1 \
        -t "dash/retained/$i" -m "retained message $i from mosquitto_pub" || {
        echo "FAIL dashboard/setup :: mosquitto_pub of a retained message failed"
        exit 1
    }
done
stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "${mqtt_port[0]}" -V 5 -i dash-sub -t 'dash/#' -v \
    -W $((browser_s + 10)) >"$work/dash-sub.out" 2>&1 &
dash_sub_pid=$!
pids+=("$dash_sub_pid")
stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "${mqtt_port[0]}" -i dash-check -t dash/ui -v -C 1 \
    -W $((browser_s + 10)) >"$work/dash-check.out" 2>&1 &
pids+=($!)
(for ((n = 0; ; n++)); do
    echo "load $n"
    sleep 0.1
done) | timeout $((browser_s + 10)) mosquitto_pub -h 127.0.0.1 -p "${mqtt_port[$last]}" \
    -i dash-load -t dash/load -l >"$work/dash-load.out" 2>&1 &
pids+=($!)

export DASHBOARD_URL="http://127.0.0.1:${api_port[$last]}/"
export DASHBOARD_NODES="$nodes"
export DASHBOARD_SUB_PID="$dash_sub_pid"
export DASHBOARD_CHECK_OUT="$work/dash-check.out"
export DASHBOARD_SHOTS_DIR="$root/docs/dashboard"
rc=0
timeout "$browser_s" node "$here/run.mjs" || rc=$?
if ((rc == 124)); then
    echo "FAIL dashboard/run :: the browser run took longer than ${browser_s} s"
fi
if ((rc != 0)); then
    for ((i = 0; i < nodes; i++)); do
        echo "    | ---- node $((i + 1)) log (tail) ----"
        tail -n 12 "$work/node-$((i + 1)).log" | sed 's/^/    | /'
    done
    echo "    | ---- dash-sub (mosquitto_sub) ----"
    tail -n 6 "$work/dash-sub.out" | sed 's/^/    | /'
fi
exit "$rc"
