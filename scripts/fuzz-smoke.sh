#!/usr/bin/env bash
# The test suite's pass over every fuzz target (scripts/test-all.sh runs
# it): each target replays its whole corpus (fuzz/corpus/TARGET: the seeds
# and every input that once found something, crashes included), then
# fuzzes for FUZZ_SMOKE_SECONDS (default 8). New inputs go to a temporary
# directory, never into the repository. Long runs: scripts/fuzz.sh.
set -euo pipefail
source "$(dirname "$0")/fuzz-env.sh"

seconds="${FUZZ_SMOKE_SECONDS:-8}"
echo "fuzz: building the targets (sanitizer $FUZZ_SANITIZER)"
fuzz_build
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
passed=0
failed=()
for target in $(fuzz_targets); do
    mkdir -p "$scratch/$target"
    log="$scratch/$target.log"
    if "$(fuzz_bin "$target")" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$scratch/$target-" \
        "$scratch/$target" "$fuzz_root/corpus/$target" >"$log" 2>&1; then
        runs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' || echo '?')
        echo "fuzz: $target ok ($runs runs over $(ls "$fuzz_root/corpus/$target" | wc -l) corpus inputs)"
        passed=$((passed + 1))
    else
        echo "fuzz: $target FAILED; its log:"
        tail -n 40 "$log"
        for crash in "$scratch/$target"-*; do
            [ -e "$crash" ] && echo "fuzz: crashing input (base64): $(base64 -w0 "$crash")"
        done
        failed+=("$target")
    fi
done
echo "fuzz: ${passed} passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
