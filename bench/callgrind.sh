#!/usr/bin/env bash
# Worker instructions per request, counted by callgrind: a figure that does not move
# with the machine's load (the wall-clock comparison in run.sh does), for comparing two
# builds of mcpgw side by side:
#
#     bench/callgrind.sh BIN_DIR [REQUESTS] [--new-connection]
#
# With MCPGW_CALLGRIND_KEEP=FILE the dump is kept there, for callgrind_annotate.
# MCPGW_CALLGRIND_TOML adds top-level tables to the gateway's config (e.g.
# $'[log]\naccess = true' for the access log's cost).
#
# BIN_DIR holds release builds of `mcpgw`, `counter-server` and `mcpgw-bench`
# (cargo build --release -p mcpgw -p mcpgw-tests -p mcpgw-bench). One worker runs under
# callgrind (bench/callgrind/exec_shim.c rewrites the supervisor's exec of the worker);
# the counter-server is the upstream; `mcpgw-bench load` sends REQUESTS (default 4000)
# `increment` calls over 4 sessions at concurrency 4. The counts are zeroed before and
# dumped after the measured load while the worker is idle, so the quotient is the
# worker's instructions per request (one heartbeat a second adds a little).
# Prints one line: `instructions_per_request N`.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cd "$1" && pwd)
requests=${2:-4000}
extra=${3:-}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >&2; }
work=$(mktemp -d /tmp/mcpgw-callgrind.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 -- "-$p" 2>/dev/null || kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
cc -shared -fPIC -O2 -o "$work/exec_shim.so" bench/callgrind/exec_shim.c -ldl

# A line from a file once it appears (bounded wait).
line_of() {
    local file=$1 prefix=$2
    for _ in $(seq 1 600); do
        if l=$(grep -m1 "^$prefix" "$file" 2>/dev/null); then echo "${l#"$prefix"}"; return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for '$prefix' in $file" >&2; cat "$file" >&2; return 1
}

setsid "$bin/counter-server" --listen 127.0.0.1:0 >"$work/counter.out" 2>"$work/counter.err" &
pids+=($!)
up=$(line_of "$work/counter.out" "counter-server listening http://")
cat >"$work/mcpgw.toml" <<TOML
listen = ["127.0.0.1:0"]
admin_listen = "127.0.0.1:0"
workers = 1
[sessions]
heartbeat_ttl_ms = 60000
${MCPGW_CALLGRIND_TOML:-}
[[upstream]]
id = "counter"
url = "http://$up/mcp"
TOML
LD_PRELOAD="$work/exec_shim.so" MCPGW_CALLGRIND_BIN="$bin/mcpgw" \
    MCPGW_CALLGRIND_OUT="$work/callgrind.out.%p" \
    setsid "$bin/mcpgw" serve -c "$work/mcpgw.toml" >"$work/mcpgw.out" 2>"$work/mcpgw.err" &
pids+=($!)
gw=$(line_of "$work/mcpgw.out" "mcpgw listening http://")
line_of "$work/mcpgw.out" "mcpgw ready" >/dev/null
load() {
    "$bin/mcpgw-bench" load --url "http://$gw/mcp" --sessions 4 --concurrency 4 \
        --warmup 0 --setup-calls 0 --requests "$1" $extra --json >/dev/null
}
load 500   # warm-up: connections, upstream sessions, allocator
worker=$(pgrep -f "callgrind.*worker" | head -1)
callgrind_control -z "$worker" >/dev/null
sleep 3    # the worker is idle: the zeroing lands at its next heartbeat
load "$requests"
sleep 3
callgrind_control -d "$worker" >/dev/null
sleep 1
dump=$(ls -t "$work"/callgrind.out.* | head -1)
total=$(grep -m1 '^summary:\|^totals:' "$dump" | awk '{print $2}')
if [ -n "${MCPGW_CALLGRIND_KEEP:-}" ]; then cp "$dump" "$MCPGW_CALLGRIND_KEEP"; fi
echo "instructions_per_request $((total / requests))"
