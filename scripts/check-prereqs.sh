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
command -v cargo >/dev/null 2>&1 \
  || miss "cargo (Rust 1.74 or newer): install it with rustup (https://rustup.rs) or 'apt-get install cargo'"
if [ "$need" = test ]; then
  command -v go >/dev/null 2>&1 \
    || miss "go (1.21 or newer, for the yamux interop test against hashicorp/yamux): install it, e.g. 'apt-get install golang'"
  command -v openssl >/dev/null 2>&1 || miss "openssl: install it, e.g. 'apt-get install openssl'"
fi
exit $missing
