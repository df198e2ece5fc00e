#!/usr/bin/env bash
# Runs the whole mcpgw test suite on a fresh Debian machine (as root): installs the Python
# MCP SDK used as a real client into tests/.venv, builds every binary, runs every test.
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
# redis-server (the package's service is not used).
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    echo "test-all: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo build --workspace --bins
cargo test --workspace
