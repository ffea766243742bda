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
mkdir -p fuzz/corpus/decode_session fuzz/artifacts
log=fuzz/artifacts/smoke.log
# libFuzzer reports every new coverage point; keep that in a log and show the verdict.
if cargo +nightly fuzz run decode_session -- -max_total_time="$secs" -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1; then
    echo "fuzz-smoke: decode_session ran ${secs}s without a crash: $(grep -m1 -o 'Done [0-9]* runs' "$log" || true)"
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
else
    status=$?
    tail -n 60 "$log" >&2
    echo "fuzz-smoke: decode_session FAILED (exit $status); full log in native/$log" >&2
    exit "$status"
fi
