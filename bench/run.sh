#!/usr/bin/env bash
# The standard mcpgw benchmark in one command, from any directory:
#
#     bench/run.sh [extra `mcpgw-bench compare` flags]
#
# Installs nginx and redis-server if they are missing (Debian packages), builds the three binaries it needs
# in release mode, runs the comparison (direct upstream vs nginx vs mcpgw, interleaved)
# and rewrites the results section of BENCHMARKS.md, bench/results/compare.{json,md,svg}.
set -euo pipefail
cd "$(dirname "$0")/.."

nginx_bin() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; }; }
if [ -z "$(nginx_bin)" ]; then
    echo "# installing nginx" >&2
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && apt-get install -y -qq nginx >&2
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq nginx >&2
    fi
fi

# The two-host scenario (`--no-cluster` skips it) starts its own redis-server.
if ! command -v redis-server >/dev/null 2>&1 && [[ " $* " != *" --no-cluster "* ]]; then
    echo "# installing redis-server" >&2
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server >&2
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends redis-server >&2
    fi
fi

cargo build --release -p mcpgw -p mcpgw-tests -p mcpgw-bench
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/mcpgw-bench" compare \
    --bin-dir "$target_dir/release" \
    --nginx "$(nginx_bin)" \
    --results bench/results \
    --update-doc BENCHMARKS.md \
    "$@"
