#!/usr/bin/env bash
# Installs what tests/interop/run.sh needs, on Debian or Ubuntu; quick when all is present.
#   apt:  mosquitto-clients, python3 + python3-venv, nodejs + npm (only those missing); for
#         security.sh also mosquitto (its mosquitto_passwd), openssl, chromium
#   pip:  paho-mqtt, PyJWT (tests/interop/requirements.txt) into tests/interop/.venv
#   npm:  mqtt (MQTT.js, tests/interop/js/package-lock.json) into tests/interop/js/node_modules;
#         playwright-core (tests/interop/browser/package-lock.json, no browser download: it
#         drives Debian's /usr/bin/chromium) into tests/interop/browser/node_modules, and the
#         same for the dashboard test (tests/dashboard/package-lock.json) into
#         tests/dashboard/node_modules
# rumqttc needs nothing: it is a dev-dependency of the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

step() { printf '==> interop install: %s\n' "$*"; }

# ---- system packages -------------------------------------------------------------------------
need=()
command -v mosquitto_pub >/dev/null && command -v mosquitto_sub >/dev/null || need+=(mosquitto-clients)
command -v python3 >/dev/null || need+=(python3)
# Debian's python3 has no ensurepip (so no working venv) without python3-venv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
for tool in timeout stdbuf; do command -v "$tool" >/dev/null || need+=(coreutils); done
command -v pgrep >/dev/null || need+=(procps)
# security.sh: mosquitto_passwd (in Debian's broker package), certificates, the browser test.
command -v mosquitto_passwd >/dev/null || need+=(mosquitto)
command -v openssl >/dev/null || need+=(openssl)
[[ -x /usr/bin/chromium ]] || need+=(chromium)

if ((${#need[@]})); then
    sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || {
            echo "interop: need root (or sudo) to install: ${need[*]}" >&2
            exit 1
        }
        sudo=(sudo)
    fi
    step "apt-get install ${need[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null
fi

# node --test with a custom reporter needs Node 18.15 or newer.
node -e 'const [a, b] = process.versions.node.split(".").map(Number);
         process.exit(a > 18 || (a === 18 && b >= 15) ? 0 : 1)' ||
    {
        echo "interop: Node $(node --version) is too old (need 18.15 or newer)" >&2
        exit 1
    }

# ---- paho-mqtt in a virtual environment ------------------------------------------------------
want_paho="$(sed -n 's/^paho-mqtt==//p' requirements.txt)"
want_jwt="$(sed -n 's/^PyJWT==//p' requirements.txt)"
if .venv/bin/python -c "import sys, paho.mqtt, jwt
sys.exit(paho.mqtt.__version__ != '$want_paho' or jwt.__version__ != '$want_jwt')" \
    >/dev/null 2>&1; then
    step "paho-mqtt $want_paho, PyJWT $want_jwt present in tests/interop/.venv"
else
    step "python3 -m venv tests/interop/.venv; pip install -r requirements.txt"
    [[ -x .venv/bin/pip ]] || python3 -m venv --clear .venv
    .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
fi

# ---- MQTT.js ---------------------------------------------------------------------------------
stamp=js/node_modules/.interop-lock.sha256
lock_sum="$(sha256sum js/package-lock.json | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$lock_sum" && -f js/node_modules/mqtt/package.json ]]; then
    step "MQTT.js $(node -p 'require("./js/node_modules/mqtt/package.json").version') present in tests/interop/js"
else
    step "npm ci (tests/interop/js)"
    (cd js && npm ci --no-audit --no-fund --loglevel=error)
    echo "$lock_sum" >"$stamp"
fi

# ---- playwright-core (drives /usr/bin/chromium; never downloads a browser) -------------------
stamp=browser/node_modules/.interop-lock.sha256
lock_sum="$(sha256sum browser/package-lock.json | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$lock_sum" && -f browser/node_modules/playwright-core/package.json ]]; then
    step "playwright-core $(node -p 'require("./browser/node_modules/playwright-core/package.json").version') present in tests/interop/browser"
else
    step "npm ci (tests/interop/browser)"
    (cd browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
    echo "$lock_sum" >"$stamp"
fi

# ---- playwright-core for the dashboard test (tests/dashboard/run.sh) --------------------------
dash=../dashboard
stamp=$dash/node_modules/.interop-lock.sha256
lock_sum="$(sha256sum "$dash/package-lock.json" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$lock_sum" && -f $dash/node_modules/playwright-core/package.json ]]; then
    step "playwright-core $(node -p "require('$dash/node_modules/playwright-core/package.json').version") present in tests/dashboard"
else
    step "npm ci (tests/dashboard)"
    (cd "$dash" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
    echo "$lock_sum" >"$stamp"
fi
