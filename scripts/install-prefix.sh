#!/usr/bin/env bash
# Builds relay from this source tree and installs it into PREFIX: a self-contained venv
# holding relay, relay_native and their locked runtime dependencies, nothing else.
#
# This is the one build recipe: the Dockerfile's builder stage runs it (then copies PREFIX
# into the slim runtime image), docs/running-a-pop.md runs it on a bare host, and
# tests/e2e/test_image_build_script.py runs it on a fresh copy of the tree and starts an
# edge and an agent from the result. Keeping every step here means the test exercises
# what the image does, on a machine that cannot run `docker build`.
#
# Usage: scripts/install-prefix.sh PREFIX      (PYTHON=python3.11 to pick the interpreter)
# Needs what `make setup` needs (scripts/check-prereqs.sh build): Python 3.11+ with headers
# and venv, a C compiler, cargo. Packages come from PyPI and crates.io, pinned and
# hash-checked (requirements/*.txt, native/Cargo.lock).
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 PREFIX" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
prefix=$1
py=${PYTHON:-python3}

"$root/scripts/check-prereqs.sh" build

# A venv made over an old one would keep whatever the old one had: refuse instead.
if [ -e "$prefix" ] && [ -n "$(ls -A "$prefix" 2>/dev/null)" ]; then
  echo "relay: $prefix exists and is not empty; install into a new PREFIX" >&2
  exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Build tools (Cython, maturin, setuptools, pip) live in a throwaway venv, so the runtime
# gets none of them. --only-binary: an sdist would be built with unhashed build deps.
"$py" -m venv "$work/build"
bpy="$work/build/bin/python"
bpip=("$bpy" -m pip --disable-pip-version-check -q)
"${bpip[@]}" install --require-hashes --only-binary :all: -r "$root/requirements/build.txt"

# relay_native (Rust): --locked fails rather than resolve crates anew if Cargo.lock is stale.
# Its own target dir: a build inside the image must not depend on a host's native/target.
(cd "$root/native" && CARGO_TARGET_DIR="$work/target" "$work/build/bin/maturin" build \
  --release --locked --interpreter "$bpy" --out "$work/wheels" --quiet)

# relay with its Cython extensions (setup.py), built with the pinned Cython/setuptools.
"${bpip[@]}" wheel --no-build-isolation --no-deps --wheel-dir "$work/wheels" "$root"

# The runtime venv has no pip of its own: the build venv's pip installs into it.
"$py" -m venv --without-pip "$prefix"
rpip=("${bpip[@]}" --python "$prefix/bin/python")
"${rpip[@]}" install --require-hashes --only-binary :all: -r "$root/requirements/runtime.txt"
"${rpip[@]}" install --no-deps --no-index "$work"/wheels/*.whl
"${rpip[@]}" check

# Every compiled part must import here, not first on a PoP.
"$prefix/bin/python" -I -c 'import relay._fastpath, relay._httpfront, relay._tlslink, relay_native'
"$prefix/bin/relay" --version
