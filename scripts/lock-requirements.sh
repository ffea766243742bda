#!/usr/bin/env bash
# Pins every Python package with its hashes (`make lock`; `make lock UPGRADE=1` moves
# pins to the newest versions pyproject.toml allows). Three files, one resolution:
#   requirements/dev.txt      runtime + build + dev/test tools: `make setup`, CI
#   requirements/runtime.txt  what relay needs to run: the image, a PoP (install-prefix.sh)
#   requirements/build.txt    what builds relay's compiled parts (install-prefix.sh)
# runtime.txt and build.txt are constrained by dev.txt, so a package has one version
# everywhere and what CI tests is what ships. --universal: one lock for every Python
# pyproject.toml allows and every platform (a pin that differs carries its marker, e.g.
# numpy for 3.11 and for 3.12+); each pin lists the hashes of all its files.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-.venv/bin/uv}
compile=("$uv" pip compile --quiet --generate-hashes --universal --python-version 3.11
  --custom-compile-command "make lock" "$@")
"${compile[@]}" pyproject.toml --extra dev requirements/build.in -o requirements/dev.txt
"${compile[@]}" pyproject.toml -c requirements/dev.txt -o requirements/runtime.txt
"${compile[@]}" requirements/build.in -c requirements/dev.txt -o requirements/build.txt
