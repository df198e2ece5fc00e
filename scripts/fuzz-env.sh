# Sourced by scripts/fuzz.sh and scripts/fuzz-smoke.sh: puts cargo-fuzz on
# PATH (installed into fuzz/.cargo-bin from crates.io when missing, with a
# C++ compiler for libFuzzer from Debian's packages when there is none) and
# sets what a stable toolchain needs to build the targets.

# Pinned: the flags the scripts pass are this version's.
CARGO_FUZZ_VERSION=0.13.2

fuzz_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/fuzz"
export PATH="$fuzz_root/.cargo-bin/bin:$PATH"
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into fuzz/.cargo-bin"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet \
        --root "$fuzz_root/.cargo-bin"
fi
# libfuzzer-sys compiles libFuzzer (C++) with the system compiler.
if ! command -v c++ >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "fuzz: installing g++ (libFuzzer is C++)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++
fi
# cargo-fuzz passes -Z flags (and -Zsanitizer for a sanitizer build); a
# stable rustc takes them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
# The instrumented build shares nothing with the workspace's (other
# RUSTFLAGS), so it has a target directory of its own; outside the tree by
# default so that a fresh clone on the same machine (CI) reuses it.
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mcpgw/fuzz-target}"
# `none` by default: the gateway's code is safe Rust (unsafe_code is denied
# in the workspace but for fd passing, which no target reaches), and the
# instrumented build is debug-assertion checked (overflow included). Set
# FUZZ_SANITIZER=address for an ASan build.
FUZZ_SANITIZER="${FUZZ_SANITIZER:-none}"
fuzz_bin() {
    echo "$FUZZ_TARGET_DIR/x86_64-unknown-linux-gnu/release/$1"
}
fuzz_targets() {
    (cd "$fuzz_root" && cargo fuzz list)
}
fuzz_build() {
    (cd "$fuzz_root/.." && cargo fuzz build --sanitizer "$FUZZ_SANITIZER" \
        --target-dir "$FUZZ_TARGET_DIR" "$@")
}
