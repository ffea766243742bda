#!/usr/bin/env bash
# One line per missing prerequisite, saying what to install; exit 1 if any is missing.
# Usage: check-prereqs.sh [build|test]
set -u
need=${1:-build}
missing=0
miss() { echo "relay: missing prerequisite: $*" >&2; missing=1; }

py=${PYTHON:-python3}
if ! command -v "$py" >/dev/null 2>&1; then
  miss "python3 (3.11 or newer): install it, e.g. 'apt-get install python3 python3-venv python3-dev'"
else
  "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || miss "Python 3.11 or newer (found $("$py" -V 2>&1)): install python3.11"
  "$py" -c 'import venv, ensurepip' 2>/dev/null \
    || miss "python3-venv: install it, e.g. 'apt-get install python3-venv'"
  inc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null)
  [ -f "$inc/Python.h" ] || miss "Python headers (Python.h): install them, e.g. 'apt-get install python3-dev'"
fi
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 \
  || miss "a C compiler: install it, e.g. 'apt-get install build-essential'"
# 1.78: the oldest cargo that reads native/Cargo.lock (lockfile version 4). Debian 12's
# cargo is 1.63, so its package name alone would not do.
if ! command -v cargo >/dev/null 2>&1; then
  miss "cargo (Rust 1.78 or newer): install it with rustup (https://rustup.rs)"
else
  cargo_version=$(cargo --version 2>/dev/null | awk '{print $2}')
  IFS=. read -r cargo_major cargo_minor _ <<<"${cargo_version:-0.0.0}"
  if [ "${cargo_major:-0}" -lt 1 ] || { [ "$cargo_major" -eq 1 ] && [ "${cargo_minor:-0}" -lt 78 ]; }; then
    miss "cargo 1.78 or newer (found ${cargo_version:-none}): update it with 'rustup update' or install it with rustup (https://rustup.rs)"
  fi
fi
if [ "$need" = test ]; then
  command -v go >/dev/null 2>&1 \
    || miss "go (1.21 or newer, for the yamux interop test against hashicorp/yamux): install it, e.g. 'apt-get install golang'"
  command -v openssl >/dev/null 2>&1 || miss "openssl: install it, e.g. 'apt-get install openssl'"
fi
exit $missing
