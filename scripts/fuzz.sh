#!/usr/bin/env bash
# A long run of one fuzz target: scripts/fuzz.sh TARGET [SECONDS]
#
# Builds the target (cargo-fuzz; see scripts/fuzz-env.sh), then fuzzes it
# for SECONDS (default 600), or for FUZZ_RUNS executions when that is set,
# at the lowest CPU priority. New inputs go to fuzz/corpus/TARGET (minimise
# before committing: scripts/fuzz.sh --minimize TARGET); a crash is written
# to fuzz/artifacts/TARGET/ and ends the run with a non-zero status. Replay
# one input: "$(scripts/fuzz.sh --bin TARGET)" INPUT.
# Extra libFuzzer flags: FUZZ_ARGS="-max_len=8192 -jobs=2".
set -euo pipefail
source "$(dirname "$0")/fuzz-env.sh"

usage() {
    echo "usage: $0 TARGET [SECONDS] | --minimize TARGET | --bin TARGET | --list" >&2
    echo "targets: $(fuzz_targets | tr '\n' ' ')" >&2
    exit 2
}
[ $# -ge 1 ] || usage
case "$1" in
    --list) fuzz_targets; exit 0 ;;
    --bin) [ $# -eq 2 ] || usage; fuzz_build "$2" >&2; fuzz_bin "$2"; exit 0 ;;
    --minimize)
        [ $# -eq 2 ] || usage
        target=$2
        fuzz_build "$target"
        corpus="$fuzz_root/corpus/$target"
        merged=$(mktemp -d)
        trap 'rm -rf "$merged"' EXIT
        # The smallest set of inputs that keeps every feature the corpus
        # reaches; it replaces the corpus.
        "$(fuzz_bin "$target")" -merge=1 -set_cover_merge=1 "$merged" "$corpus"
        rm -rf "$corpus"
        mkdir -p "$corpus"
        cp "$merged"/* "$corpus"/
        echo "fuzz: $target corpus minimised to $(ls "$corpus" | wc -l) inputs"
        exit 0
        ;;
esac
target=$1
seconds=${2:-600}
fuzz_targets | grep -qx "$target" || usage
fuzz_build "$target"
mkdir -p "$fuzz_root/corpus/$target" "$fuzz_root/artifacts/$target"
limit=("-max_total_time=$seconds")
if [ -n "${FUZZ_RUNS:-}" ]; then
    limit=("-runs=$FUZZ_RUNS")
fi
# shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
exec nice -n 19 "$(fuzz_bin "$target")" "${limit[@]}" -print_final_stats=1 \
    -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$fuzz_root/artifacts/$target/" ${FUZZ_ARGS:-} \
    "$fuzz_root/corpus/$target"
