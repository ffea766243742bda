#!/usr/bin/env bash
# Usage: native/fuzz/smoke.sh SECONDS
# Run the cargo-fuzz target decode_session for SECONDS seconds (nightly toolchain).
set -euo pipefail
secs="${1:-30}"
cd "$(dirname "$0")/.."  # native/
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz-smoke: the nightly Rust toolchain is not installed (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz 0.12.0" >&2
    cargo install cargo-fuzz --locked --version 0.12.0 --quiet
fi
mkdir -p fuzz/corpus/decode_session
exec cargo +nightly fuzz run decode_session -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1
